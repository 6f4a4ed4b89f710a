"""A plain Hugging Face model directory made once from a GGUF file, so one GGUF serves every backend.

transformers loads a GGUF only dequantized (``gguf_file=``), refuses a quantization config on such a
model and cannot ``save_pretrained`` it. So the weights it dequantized are copied into a fresh
``*ForCausalLM`` built from the same config and saved with the tokenizer as float32 (the exact values
of the dequantized blocks). The directory is cached under the GGUF's sha256 and built in a separate
process (``python -m harness.sources.gguf_to_hf GGUF OUT``, which dies with the cell that waits for it), so
the cell that needs it first does not carry the conversion's memory in its own peak RSS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.core.process import child_command
from harness.sources.cache import cache_dir

#: bump when the directory's layout or the conversion changes, so stale directories are rebuilt
FORMAT = 1


def materialized_dir(gguf_sha256: str) -> Path:
    return cache_dir() / "hf-from-gguf" / f"{gguf_sha256[:32]}-v{FORMAT}"


def ensure_materialized(gguf_path: Path, gguf_sha256: str) -> tuple[Path, float]:
    """The HF directory for this GGUF and the seconds spent building it now (0 when cached)."""
    target = materialized_dir(gguf_sha256)
    if (target / "config.json").exists():
        return target, 0.0
    start = time.perf_counter()
    done = subprocess.run(child_command("harness.sources.gguf_to_hf", str(gguf_path), str(target)))
    if done.returncode != 0:
        raise RuntimeError(f"converting {gguf_path} to a Hugging Face directory failed "
                           f"(exit code {done.returncode}; see the log above)")
    return target, time.perf_counter() - start


def materialize(gguf_path: Path, target: Path) -> None:
    """Write model and tokenizer of ``gguf_path`` to ``target`` atomically (a temp dir renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                  **_dequantized())
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF's, which would make the copy load as GGUF
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.config.name_or_path = str(gguf_path)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _dequantized() -> dict:
    """transformers >= 5 may keep GGUF blocks packed (with the ``kernels`` package); ask for dense
    weights. Older versions always dequantize and have no GgufConfig."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


if __name__ == "__main__":
    materialize(Path(sys.argv[1]), Path(sys.argv[2]))
