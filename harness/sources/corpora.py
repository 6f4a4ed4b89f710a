"""Corpora: the exact text a task reads, from wherever the suite says, always fingerprinted.

Sources (contract): ``builtin:NAME[#split]``, ``file:PATH``, ``corpora:NAME`` (a file under the
corpora directory from ``--corpora`` or ``HARNESS_CORPORA``), ``hf:DATASET/CONFIG[#split]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.core.errors import UserError, require
from harness.core.paths import expand_user
from harness.core.settings import StrictModel
from harness.sources.fingerprint import sha256_bytes
from harness.sources.hub import quiet_hub

CORPORA_ENV = "HARNESS_CORPORA"

#: sha256 of the standard corpora files as published; a mismatch means incomparable numbers.
KNOWN_SHA256 = {
    "wikitext-2-raw/wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "wikitext-2/wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    "wikitext-2/wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "janeausten/prideprejudice.txt": "dfc684d4f857fa938268f9ab9c5567b64bd0691251eca959644adeabe6287a4d",
    "janeausten/sensesensibility.txt": "105e1651fe93bed7130078578efd31e0c557d68667ba672ddc876f735b30fe09",
    "janeausten/mansfieldpark.txt": "98bc90519cdf4ef663ad7de2734bb529435ef24f7abbde6bb1a50898871dafe9",
    "janeausten/northangerabbey.txt": "51f91bbe0517db8e65cff009b097ce0a1836124c4e0532ac19e6c0cad982abed",
    "janeausten/persuasion.txt": "8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a",
}

BUILTIN_SPLITS = ("train", "test")


class DatasetSpec(StrictModel):
    """One entry under ``datasets:``."""

    source: str


@dataclass(frozen=True)
class Corpus:
    name: str
    source: str
    text: str
    sha256: str

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def fingerprint(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "bytes": self.n_bytes}


def stdlib_docs(split: str) -> str:
    """The stdlib's pydoc topic texts, split deterministically: every fifth topic (sorted) is test."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    chosen = [k for i, k in enumerate(keys) if (i % 5 == 4) == (split == "test")]
    return "\n\n".join(topics[k].strip() for k in chosen) + "\n"


BUILTINS = {"stdlib-docs": stdlib_docs}


#: texts that stand in for their sources in this process (source -> a file holding the text): a cell on a
#: cluster node reads what the run's driver read, without the suite's files or corpora on that node
_SHIPPED: dict[str, Path] = {}


def use_texts(texts: dict[str, Path]) -> None:
    """Read these sources from these files instead (the worker of a cell the driver sent them with)."""
    _SHIPPED.update(texts)


def corpora_dir(override: str | Path | None = None) -> Path | None:
    value = override or os.environ.get(CORPORA_ENV)
    return expand_user(value) if value else None


def _split(ref: str, default: str) -> tuple[str, str]:
    body, _, split = ref.partition("#")
    return body, split or default


def _builtin(ref: str) -> str:
    body, split = _split(ref, "test")
    if body not in BUILTINS:
        raise UserError(f"unknown builtin '{body}', expected one of {sorted(BUILTINS)}")
    if split not in BUILTIN_SPLITS:
        raise UserError(f"unknown split '{split}', expected one of {BUILTIN_SPLITS}")
    return BUILTINS[body](split)


def _read_file(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a text file")
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if not path.is_file():  # a FIFO would block the read, a device never end
        raise UserError(f"{path}: not a regular file, expected a text file")
    try:
        return path.read_bytes().decode("utf-8")  # bytes as they are: no newline translation
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def corpora_path(ref: str, corpora: Path | None) -> Path:
    """A file under the corpora directory, and only there: a suite travels between people, so
    ``corpora:../../etc/passwd`` (or a link that leads out) must not read any file of the machine."""
    if corpora is None:
        raise UserError(f"corpora:{ref} needs a corpora directory: "
                        f"pass --corpora DIR or set {CORPORA_ENV}")
    relative = PurePosixPath(ref)
    if not ref or relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"corpora:{ref}: expected a path inside the corpora directory, without '..'")
    path = corpora / relative
    if not path.resolve().is_relative_to(corpora.resolve()):
        raise UserError(f"corpora:{ref}: {path} links to {path.resolve()}, outside the corpora directory {corpora}")
    return path


def _hub(ref: str) -> str:
    """Rows of the dataset's ``text`` column concatenated as they are: WikiText rows keep their
    newlines, so ``hf:Salesforce/wikitext/wikitext-2-raw-v1#test`` is byte-identical to wiki.test.raw."""
    body, split = _split(ref, "test")
    dataset, _, config = body.rpartition("/")
    if not dataset or not config:
        raise UserError(f"expected hf:DATASET/CONFIG[#split], got 'hf:{ref}'")
    datasets = require("datasets", "hub", f"dataset source hf:{ref}")
    try:
        with quiet_hub():
            rows = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # offline, unknown name or split
        raise UserError(f"cannot load hf:{ref} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if "text" not in rows.column_names:
        raise UserError(f"hf:{ref} has no 'text' column (has {rows.column_names})")
    return "".join(rows["text"])


def load_corpus(name: str, spec: DatasetSpec, base_dir: Path, corpora: Path | None = None) -> Corpus:
    source = spec.source
    kind, sep, ref = source.partition(":")
    if not sep:
        raise UserError(f"expected builtin:, file:, corpora: or hf: source, got '{source}'")
    if source in _SHIPPED:
        text = _read_file(_SHIPPED[source])
    elif kind == "builtin":
        text = _builtin(ref)
    elif kind == "file":
        text = _read_file(base_dir / expand_user(ref))  # ~ is the user's home, not a folder beside the suite
    elif kind == "corpora":
        text = _read_file(corpora_path(ref, corpora))
    elif kind == "hf":
        text = _hub(ref)
    else:
        raise UserError(f"unknown source kind '{kind}:', "
                        "expected builtin:, file:, corpora: or hf:")
    if not text.strip():
        raise UserError(f"{source} is empty: there is no text to read")
    digest = sha256_bytes(text.encode("utf-8"))
    expected = KNOWN_SHA256.get(ref) if kind == "corpora" else None
    if expected and digest != expected:
        raise UserError(f"{source} has sha256 {digest[:12]}…, expected the published "
                        f"{expected[:12]}…: a different text gives incomparable numbers")
    return Corpus(name=name, source=source, text=text, sha256=digest)
