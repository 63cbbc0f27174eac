"""A bounds-checking reader of a GGUF header: metadata values and tensor descriptions.

A hostile or damaged file could claim 2^60 array items or lengths past its end; this reader
checks every count and length against the bytes that remain before reading, and raises
ModelFormatError. It reads values as plain Python (numeric arrays via numpy), never allocating
by a count it has not checked. (gguf.GGUFReader trusts what it reads, and builds a numpy view per
string, which took ~2.8 s for a 49k-token vocabulary; this takes ~0.1 s.)
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from engine.errors import ModelFormatError

MAGIC = b"GGUF"
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_TYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
                12: "<f8"}
_STRING, _ARRAY = 8, 9
MAX_STRING = 1 << 24  # 16 MiB: far beyond any real key, token or chat template
MAX_DIMS = 4


class _Cursor:
    def __init__(self, data, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFormatError(self.path, f"truncated or corrupt GGUF header: {what} needs {n} bytes at offset "
                                              f"{self.pos}, the file has {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what + " length")
        if n > MAX_STRING:
            raise ModelFormatError(self.path, f"corrupt GGUF header: {what} claims {n} bytes")
        return bytes(self.take(n, what)).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str):
        if vtype in _SCALAR_SIZES:
            return struct.unpack(_SCALAR_FORMATS[vtype], self.take(_SCALAR_SIZES[vtype], what))[0]
        elif vtype == _STRING:
            return self.string(what)
        elif vtype == _ARRAY:
            item_type, count = self.u32(what + " item type"), self.u64(what + " count")
            if item_type in _SCALAR_SIZES:
                raw = self.take(count * _SCALAR_SIZES[item_type], f"{what} ({count} items)")
                values = np.frombuffer(raw, dtype=_NUMPY_TYPES[item_type]).tolist()
                return [bool(v) for v in values] if item_type == 7 else values
            elif item_type == _STRING:
                if count * 8 > len(self.data) - self.pos:  # each string needs at least its length
                    raise ModelFormatError(self.path, f"corrupt GGUF header: {what} claims {count} strings")
                return [self.string(what + " item") for _ in range(count)]
            else:
                raise ModelFormatError(self.path, f"corrupt GGUF header: {what} has arrays of type {item_type}")
        else:
            raise ModelFormatError(self.path, f"corrupt GGUF header: {what} has unknown value type {vtype}")


def read_header(path: Path, data: mmap.mmap | bytes) -> tuple[dict, list[tuple[str, tuple[int, ...], int, int]]]:
    """Validate and read the header: (metadata as plain Python values, tensor infos as
    (name, dims innermost first, ggml type id, absolute data offset))."""
    cur = _Cursor(data, path)
    magic = bytes(cur.take(4, "magic"))
    if magic != MAGIC:
        raise ModelFormatError(path, f"not a GGUF file (magic {magic!r})")
    version = cur.u32("version")
    if version not in (2, 3):
        raise ModelFormatError(path, f"unsupported GGUF version {version} (Glassbox reads versions 2 and 3)")
    n_tensors, n_kv = cur.u64("tensor count"), cur.u64("metadata count")
    # The smallest possible entries are ~13 and ~24 bytes: larger counts cannot fit in the file.
    if n_kv * 13 > len(data) or n_tensors * 24 > len(data):
        raise ModelFormatError(path, f"truncated or corrupt GGUF header: {n_tensors} tensors and {n_kv} metadata "
                                     f"entries cannot fit in {len(data)} bytes")
    meta = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        meta[key] = cur.value(cur.u32(f"type of {key!r}"), f"metadata {key!r}")
    alignment = meta.get("general.alignment", 32)  # GGUF's default is 32
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(path, f"corrupt GGUF header: alignment {alignment} is not a power of two")
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        n_dims = cur.u32(f"dimensions of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFormatError(path, f"corrupt GGUF header: tensor {name!r} has {n_dims} dimensions")
        dims = tuple(cur.u64(f"shape of {name!r}") for _ in range(n_dims))
        if 0 in dims:  # an empty weight is no weight; numpy cannot even reshape it into rows
            raise ModelFormatError(path, f"corrupt GGUF header: tensor {name!r} has shape {dims}")
        infos.append((name, dims, cur.u32(f"type of {name!r}"), cur.u64(f"offset of {name!r}")))
    data_start = -(-cur.pos // alignment) * alignment
    return meta, [(name, dims, kind, data_start + offset) for name, dims, kind, offset in infos]


def check_tensor_extents(path: Path, infos, file_size: int) -> None:
    """Every tensor's bytes (from its type's block layout) must end inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for name, dims, kind, start in infos:
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise ModelFormatError(path, f"tensor {name!r} has unknown type id {kind}") from None
        n = 1
        for d in dims:
            n *= d
        if n % block:
            raise ModelFormatError(path, f"tensor {name!r}: {n} values do not fill whole {block}-value blocks")
        end = start + n // block * block_bytes
        if end > file_size:
            raise ModelFormatError(path, f"truncated GGUF file: tensor {name!r} ends at byte {end}, "
                                         f"the file has {file_size}")
