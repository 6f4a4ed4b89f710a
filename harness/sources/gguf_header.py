"""What ``validate`` reads of a GGUF file without loading it: its metadata (the context length the model was
trained on) and its tensor table, checked against the file's size, so a truncated copy (an interrupted
download, a full disk) fails before any cell runs instead of as a crash inside llama.cpp.

The layout (GGUF v2/v3, little-endian): magic, version, tensor count, metadata count, the metadata
key/values, one entry per tensor (name, dims, type, offset), padding to ``general.alignment``, tensor data.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import UserError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class GgufHeader:
    #: scalar and string metadata (arrays, such as the vocabulary, are skipped)
    metadata: dict
    #: (name, number of elements, ggml type, offset from the start of the data)
    tensors: list[tuple[str, int, int, int]]
    data_start: int

    @property
    def context_length(self) -> int | None:
        """The context the model was trained on (``ARCH.context_length``)."""
        return self.metadata.get(f"{self.metadata.get('general.architecture')}.context_length")


class _Reader:
    """Walks the header in a read-only map of the file (the vocabulary alone is ~100k length-prefixed strings)."""

    def __init__(self, buffer, size: int):
        self.buffer, self.size, self.pos = buffer, size, 0

    def read(self, n: int) -> bytes:
        self.skip(n)
        return self.buffer[self.pos - n:self.pos]

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.read(self.scalar("<Q")).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated
        self.pos += n

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item]))
            elif item == _STRING:  # the vocabulary: the hot loop of the walk
                pos, unpack = self.pos, _U64.unpack_from
                for _ in range(count):
                    if pos + 8 > self.size:
                        raise _Truncated
                    pos += 8 + unpack(self.buffer, pos)[0]
                if pos > self.size:
                    raise _Truncated
                self.pos = pos
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise ValueError(f"unknown metadata value type {kind}")


@functools.cache
def _type_sizes() -> dict[int, tuple[int, int]]:
    """(block size, bytes per block) of each ggml type, from gguf-py when installed (every backend that
    loads a GGUF needs it); without it only the tensors' offsets are checked."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        return {}
    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def tensor_nbytes(kind: int, elements: int) -> int | None:
    """Bytes a tensor of ``elements`` values takes in ggml type ``kind`` (None: the type's size is unknown)."""
    block, nbytes = _type_sizes().get(kind, (0, 0))
    return elements // block * nbytes if block else None


@functools.lru_cache(maxsize=64)
def _read(path: Path, mtime_ns: int, size: int) -> GgufHeader:
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if magic != GGUF_MAGIC:
            raise UserError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            r = _Reader(buffer, size)
            r.pos = 4
            try:
                version, n_tensors, n_kv = r.scalar("<I"), r.scalar("<Q"), r.scalar("<Q")
                if version not in (2, 3):
                    raise UserError(f"{path}: GGUF version {version}, expected 2 or 3")
                metadata = {}
                for _ in range(n_kv):
                    key = r.string()
                    metadata[key] = r.value(r.scalar("<I"))
                tensors = []
                for _ in range(n_tensors):
                    name, n_dims = r.string(), r.scalar("<I")
                    elements = 1
                    for _ in range(n_dims):
                        elements *= r.scalar("<Q")
                    tensors.append((name, elements, r.scalar("<I"), r.scalar("<Q")))
            except _Truncated:
                raise UserError(f"{path} is truncated: its header ends past the end of the file ({size:,} bytes)"
                                ) from None
            except (ValueError, struct.error) as exc:
                raise UserError(f"{path} is not a valid GGUF file ({exc})") from None
    alignment = metadata.get("general.alignment") or 32
    data_start = -(-r.pos // alignment) * alignment
    sizes = _type_sizes()
    end = 0
    for _, elements, kind, offset in tensors:
        block, nbytes = sizes.get(kind, (1, 0))
        end = max(end, data_start + offset + elements // block * nbytes)
    if end > size:
        raise UserError(f"{path} is truncated: its tensors need {end:,} bytes, the file has {size:,}")
    return GgufHeader(metadata, tensors, data_start)


def read_header(path: Path) -> GgufHeader:
    """The header of a GGUF file, or UserError naming the file: not a GGUF, a directory, truncated."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a GGUF file")
    stat = path.stat()
    return _read(path, stat.st_mtime_ns, stat.st_size)
