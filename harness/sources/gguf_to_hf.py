"""A plain Hugging Face model directory made once from a GGUF file, so one GGUF serves every backend.

transformers loads a GGUF only dequantized (``gguf_file=``), refuses a quantization config on such a
model and cannot ``save_pretrained`` it. So the weights it dequantized are copied into a fresh
``*ForCausalLM`` built from the same config and saved with the tokenizer as float32 (the exact values
of the dequantized blocks). The directory is a cache entry (:mod:`harness.sources.cache_entry`) under the
GGUF's sha256, built in a separate process (``python -m harness.sources.gguf_to_hf GGUF OUT``, which dies with
the cell that waits for it), so the cell that needs it first does not carry the conversion's memory in its own
peak RSS.

The tokenizer is transformers' conversion of the GGUF's vocabulary with llama.cpp's pre-tokenizer for
the file set in (:mod:`harness.sources.gguf_pretokenizer`): transformers alone splits some texts otherwise.
What was set is written beside it (``gguf_tokenizer.json``) for the cell's params.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.core.files import Damaged, read_json_object
from harness.core.process import child_command
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import cached

#: bump when the directory's layout or the conversion changes, so stale directories are rebuilt
#: (2: llama.cpp's pre-tokenizer, gguf_tokenizer.json)
FORMAT = 2
#: what :func:`save_tokenizer` set, beside the tokenizer
TOKENIZER_RECORD = "gguf_tokenizer.json"


def materialized_dir(gguf_sha256: str) -> Path:
    return cache_dir() / "hf-from-gguf" / f"{gguf_sha256[:32]}-v{FORMAT}"


def ensure_materialized(gguf_path: Path, gguf_sha256: str) -> tuple[Path, float]:
    """The HF directory for this GGUF and the seconds spent building it now (0 when cached)."""
    entry = cached(materialized_dir(gguf_sha256), lambda tmp: _convert(gguf_path, tmp), check_materialized)
    return entry.path, entry.build_s or 0.0


def _convert(gguf_path: Path, out: Path) -> None:
    """:func:`materialize` in a process of its own."""
    done = subprocess.run(child_command("harness.sources.gguf_to_hf", str(gguf_path), str(out)),
                          stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "")
        raise RuntimeError(f"converting {gguf_path} to a Hugging Face directory failed "
                           f"(exit code {done.returncode}): {last.strip()}")


def check_materialized(hf_dir: Path) -> None:
    """A whole converted directory: its config and tokenizer record parse, its weights are all there."""
    read_json_object(hf_dir / "config.json", "a model config")
    read_json_object(hf_dir / TOKENIZER_RECORD, "the GGUF tokenizer's record")
    weights = sorted(hf_dir.glob("*.safetensors"))
    if not weights:
        raise Damaged(hf_dir, "no *.safetensors weights")
    for path in weights:
        check_safetensors(path)


def check_safetensors(path: Path) -> None:
    """The file is as long as its header says (a u64 header length, the JSON header, then the tensors)."""
    with open(path, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise Damaged(path, "its safetensors header does not parse") from None
    end = max((t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"), default=0)
    size = path.stat().st_size
    if size != 8 + length + end:
        raise Damaged(path, f"its tensors need {8 + length + end:,} bytes, the file has {size:,}")


def tokenizer_record(hf_dir: Path) -> dict:
    """The GGUF's tokenizer names and the pre-tokenizer :func:`save_tokenizer` set (the cell's params)."""
    return json.loads((Path(hf_dir) / TOKENIZER_RECORD).read_text())


def save_tokenizer(gguf_path: Path, target: Path) -> dict:
    """transformers' tokenizer of ``gguf_path`` with llama.cpp's pre-tokenizer, saved into ``target``
    with its record; returns the record."""
    from transformers import AutoTokenizer

    from harness.sources.gguf_pretokenizer import apply_gguf_pre_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    record = apply_gguf_pre_tokenizer(tokenizer, gguf_path)
    tokenizer.save_pretrained(target)
    (Path(target) / TOKENIZER_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record


def materialize(gguf_path: Path, target: Path) -> None:
    """Write model and tokenizer of ``gguf_path`` into the new folder ``target`` (the cache entry's temp path:
    :func:`ensure_materialized` publishes it whole)."""
    import torch
    from transformers import AutoModelForCausalLM

    save_tokenizer(gguf_path, target)  # first: a pre-tokenizer it cannot reproduce stops the conversion early
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                  **_dequantized())
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the GGUF's, which would make the copy load as GGUF
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.config.name_or_path = str(gguf_path)
    fresh.save_pretrained(target)


def _dequantized() -> dict:
    """transformers >= 5 may keep GGUF blocks packed (with the ``kernels`` package); ask for dense
    weights. Older versions always dequantize and have no GgufConfig."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


if __name__ == "__main__":
    from harness.sources.gguf_pretokenizer import UnknownPreTokenizer

    try:
        materialize(Path(sys.argv[1]), Path(sys.argv[2]))
    except UnknownPreTokenizer as exc:  # one line, which the parent puts in the cell's reason
        sys.exit(str(exc))
