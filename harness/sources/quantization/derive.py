"""A quantized Hugging Face model derived once from a full-precision HF directory, by a method that produces
``hf`` (torchao, quanto, hqq, ...), in a child process (``python -m harness.sources.quantization.derive TARGET``,
its recipe on stdin), so its memory stays out of the cell's peak RSS and it dies with the run.

The directory is a cache entry (:mod:`harness.sources.cache_entry`: locked, published whole) keyed by the
source's sha256, the method's identity, the calibration text's sha256 and the versions of torch, transformers
and the method's libraries. Beside the model and the source's tokenizer it holds ``quantize.json``: the method,
the child's wall time (``quantize_s``) and its own peak RSS (``peak_rss_mb``: the kernel's high-water mark of
the child, VmHWM), which every later run reports with ``cached: true``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import MissingDependency
from harness.core.files import read_json_object
from harness.core.memory import hwm_bytes
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import announce, cached
from harness.sources.child import child_main, progress, run_child
from harness.sources.fingerprint import sha256_bytes
from harness.sources.quantization.method import Calibration, QuantMethod, parse_quantize

#: bump when the directory's layout or the derivation changes, so stale directories are rebuilt
FORMAT = 1
#: how the directory was made, beside the model
QUANTIZE_RECORD = "quantize.json"
#: always key the cache, whatever the method
BASE_LIBRARIES = ("torch", "transformers")
#: the source's files that are its tokenizer (and the GGUF it came from), copied beside the quantized model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt", "gguf_tokenizer.json",
                   "tokenizer_source.json")


@dataclass(frozen=True)
class Derived:
    """A derived model's directory, its ``quantize.json`` and whether this run found it in the cache."""

    path: Path
    record: dict
    cached: bool

    def info(self) -> dict:
        """What a cell reports of the derivation (its ``quantization`` in the resolved model)."""
        return {**self.record, "cached": self.cached, "path": str(self.path)}


def library_versions(method: QuantMethod) -> dict[str, str]:
    """The versions that key the cache; a missing library of the method is named with its extra."""
    versions = {}
    for name in BASE_LIBRARIES + method.libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise MissingDependency(name, method.extra or "hf", f"quantize: {{method: {method.method}}}") from None
    return versions


def derivation_key(source_sha256: str, method: QuantMethod, calibration: Calibration | None) -> str:
    identity = {"format": FORMAT, "source": source_sha256, "method": method.identity(),
                "calibration": calibration.sha256 if calibration else None, "versions": library_versions(method)}
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode())


def derived_dir(source_sha256: str, method: QuantMethod, calibration: Calibration | None) -> Path:
    return cache_dir() / "quantized-hf" / f"{method.method}-{derivation_key(source_sha256, method, calibration)[:32]}"


def read_record(directory: Path) -> dict:
    """The entry's ``quantize.json`` (the check of a whole entry: the child writes it last)."""
    read_json_object(Path(directory) / "config.json", "a model config")
    return read_json_object(Path(directory) / QUANTIZE_RECORD, "a quantization record")


def derive_hf(source_dir: Path, source_sha256: str, method: QuantMethod, calibration: Calibration | None,
              threads: int | None = None) -> Derived:
    """``method`` applied to the HF model in ``source_dir``: from the cache, or made now by a child process."""
    target = derived_dir(source_sha256, method, calibration)
    recipe = {"method": method.model_dump(mode="json"), "source": str(source_dir), "source_sha256": source_sha256,
              "calibration": None if calibration is None else {"text": calibration.text, "sha256": calibration.sha256},
              "threads": threads}

    def build(tmp: Path) -> None:
        run_child("harness.sources.quantization.derive", [str(tmp)], f"quantizing {source_dir} ({method.label})",
                  stdin=json.dumps(recipe), echo=False)

    entry = cached(target, build, read_record)
    announce(method.label, source_dir, target, entry.value["quantize_s"] if entry.build_s is not None else None)
    return Derived(target, entry.value, cached=entry.build_s is None)


def _quantize_into(recipe: dict, target: Path) -> None:
    """The child's work: quantize, copy the tokenizer, then write the record (last: it marks the entry whole)."""
    import torch
    import transformers

    start = time.perf_counter()
    method = parse_quantize(recipe["method"])
    threads = recipe["threads"] or torch.get_num_threads()
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # the loader's and the shard writer's: ours is the line below
    warnings.simplefilter("ignore")
    given = recipe["calibration"]
    calibration = Calibration(**given) if given else None
    source = Path(recipe["source"])
    target.mkdir()
    with progress() as shown:
        shown.add_task(f"quantizing ({method.label})", total=None)
        method.quantize(source, target, calibration, threads)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    record = {"format": FORMAT, "method": recipe["method"], "label": method.label, "source": str(source),
              "source_sha256": recipe["source_sha256"], "calibration_sha256": given["sha256"] if given else None,
              "quantize_s": time.perf_counter() - start,
              "peak_rss_mb": hwm_bytes() / 2**20,  # VmHWM: ru_maxrss would carry the parent's across exec
              "threads": threads, "versions": library_versions(method)}
    (target / QUANTIZE_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    child_main(lambda: _quantize_into(json.loads(sys.stdin.read()), Path(sys.argv[1])))
