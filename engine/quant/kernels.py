"""Glassbox's own quantized matmul kernels (C++, engine/quant/csrc/, built at install) and the weights
laid out for them. Owns loading the compiled ops and the block layout; the PyTorch-kernel weights
(int4.py, int8.py) turn into these when the ops are loaded and their activations may be rounded.

Values: GGUF's blocks with their bits kept: 32 values per block, fp16 scales. Q4_1 (and our int4-gN):
codes 0..15, w = d * code + m; Q4_0: w = d * (code - 8), no m stored; Q8_0: int8 codes, w = d * code.
Packed layout (built once at load, qlinear.h has the picture): output rows in tiles of 16, each tile
one contiguous run of per-block records holding that block's 4-byte code words for the 16 rows side by
side, then their scales, so a kernel streams a tile front to back and each SIMD lane is one row.
The kernels round each activation block to 8 bits (xq = round(x / dx), dx = max|x| / 127) and sum
integer products, as llama.cpp does (+0.9% perplexity on the default model against float activations,
docs/benchmarks.md); activations in a narrower float add nothing, so the weights take float32 in
(compute_dtype) and avoid two casts per call. Every number of rows (a decoded token, a verify window, a
prefill chunk) takes the same per-row arithmetic, so a row's result never depends on its neighbours.

GLASSBOX_NO_KERNELS=1 keeps PyTorch's kernels; GLASSBOX_KERNEL_ISA=scalar|avx2|avx512 forces a path.
Shapes: N output features, K input features, G = ceil(K / 32) blocks per row.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

BLOCK = 32
_log = logging.getLogger("glassbox.kernels")
_state: dict = {}  # the one load attempt: {"error": str | None, "disabled": bool}


def load_error() -> str | None:
    """None when the compiled ops are loaded (loading them on the first call), else why not. The
    reason is logged once; the engine then runs PyTorch's kernels."""
    if not _state:
        _state["error"] = _load()
        if _state["error"]:
            _log.warning("glassbox kernels not used: %s; quantized layers use PyTorch's kernels", _state["error"])
    return _state["error"]


def available() -> bool:
    return load_error() is None and not _state.get("disabled", False)


@contextlib.contextmanager
def disabled():
    """Weights moved inside keep PyTorch's kernels, as without the extension (tests of the fallback)."""
    load_error()
    before, _state["disabled"] = _state.get("disabled", False), True
    try:
        yield
    finally:
        _state["disabled"] = before


def _load() -> str | None:
    if os.environ.get("GLASSBOX_NO_KERNELS", "") not in ("", "0"):
        return "GLASSBOX_NO_KERNELS is set"
    spec = importlib.util.find_spec("engine.quant._kernels")
    # beside this file: where a PyInstaller bundle puts it (packaging/glassbox.spec), should no finder see it
    beside = sorted(p for p in Path(__file__).parent.glob("_kernels.*") if p.suffix in (".so", ".pyd"))
    path = spec.origin if spec is not None and spec.origin else (str(beside[0]) if beside else None)
    if path is None:
        return "the C++ extension was not built (reinstall with scripts/setup.sh)"
    try:
        torch.ops.load_library(path)
    except OSError as error:
        return f"the C++ extension did not load ({error})"
    forced = os.environ.get("GLASSBOX_KERNEL_ISA")
    if forced:
        try:
            use_isa(forced)
        except RuntimeError as error:
            return str(error).splitlines()[0]
    return None


def isa() -> str:
    """The SIMD path the ops run ('avx512', 'avx2' or 'scalar'), or 'pytorch' without them."""
    return torch.ops.glassbox.kernel_isa() if available() else "pytorch"


def supported_isas() -> list[str]:
    return list(torch.ops.glassbox.supported_isas()) if available() else []


def use_isa(name: str) -> str:
    """Force a path ('best' for the CPU's best); returns the one it replaces."""
    return torch.ops.glassbox.use_isa(name)


def wants_kernels(device, dtype) -> bool:
    """Whether a weight moved to (device, dtype) takes our kernels: on the CPU, when activations may
    be rounded (a narrower compute dtype: `quant_exact` keeps float32 and PyTorch's exact kernels)."""
    return torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16) and available()


TILE = 16  # output rows per tile of the packed layout
Q4_1, Q4_0, Q8_0 = 0, 1, 2  # the packed formats (engine/quant/csrc/qlinear.h)


def _tiles(t: torch.Tensor, rows: int) -> torch.Tensor:
    """[N, ...] -> [tiles, 16, ...]: rows padded with zeros to whole tiles."""
    pad = -rows % TILE
    if pad:
        t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])])
    return t.view(-1, TILE, *t.shape[1:])


def _pack(codes: torch.Tensor, scales: list[torch.Tensor]) -> torch.Tensor:
    """codes uint8 [N, G, W*4] (W 4-byte words a row's block), scales fp16 [N, G] each -> the packed layout
    [tiles, G, W*64 + 32 per scale]: per tile and block, word k of the 16 rows side by side, then each
    scale of the 16 rows (qlinear.h)."""
    N, G, nbytes = codes.shape
    words = _tiles(codes, N).view(-1, TILE, G, nbytes // 4, 4).permute(0, 2, 3, 1, 4)  # [T, G, W, 16, 4]
    parts = [words.reshape(-1, G, nbytes * TILE)]
    for scale in scales:  # [T, G, 16] fp16 -> 32 bytes
        parts.append(_tiles(scale.to(torch.float16), N).transpose(1, 2).contiguous().view(torch.uint8))
    return torch.cat(parts, dim=-1).contiguous()


def _unpack(packed: torch.Tensor, N: int, code_bytes: int, n_scales: int):
    """Inverse of _pack: codes uint8 [N, G, code_bytes] and the fp16 scales [N, G]."""
    T, G, _ = packed.shape
    words = packed[..., : code_bytes * TILE].reshape(T, G, code_bytes // 4, TILE, 4).permute(0, 3, 1, 2, 4)
    codes = words.reshape(T * TILE, G, code_bytes)[:N]
    scales = []
    for i in range(n_scales):
        start = code_bytes * TILE + 2 * TILE * i
        raw = packed[..., start:start + 2 * TILE].contiguous().view(torch.float16)  # [T, G, 16]
        scales.append(raw.transpose(1, 2).reshape(T * TILE, G)[:N])
    return codes, scales


class _PackedWeight:
    """Rows of blocks in the kernels' packed layout; subclasses say how codes and scales go in."""

    compute_dtype = torch.float32
    device = torch.device("cpu")
    format: int

    def __init__(self, packed: torch.Tensor, fmt: int, out_features: int, in_features: int):
        self.packed, self.format = packed, fmt
        self.out_features, self.in_features = out_features, in_features
        self.shape = (out_features, in_features)

    def to(self, device=None, dtype=None):
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("glassbox kernel weights live on the CPU; build the model on its device instead")
        return self

    @property
    def nbytes(self) -> int:  # the padding rows of the last tile included: they are read too
        return self.packed.numel()

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: the values the kernel multiplies (fp16 scales widened exactly)."""
        return torch.ops.glassbox.packed_dequantize(self.packed, self.format, self.out_features, self.in_features,
                                                    torch.empty(0, dtype=torch.long))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return torch.empty(*ids.shape, self.in_features)
        values = torch.ops.glassbox.packed_dequantize(self.packed, self.format, self.out_features,
                                                      self.in_features, ids.reshape(-1))
        return values.reshape(*ids.shape, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> float32 [..., N], activations rounded to 8 bits per block (any number of rows:
        prefill takes the same kernel, tiled over many rows, so its numbers are decode's)."""
        return torch.ops.glassbox.packed_linear(x, self.packed, self.format, self.out_features)

    @classmethod
    def concat(cls, weights: list) -> "_PackedWeight | None":
        if any(w.in_features != weights[0].in_features or w.format != weights[0].format for w in weights):
            return None
        return cls._from_parts([w._parts() for w in weights], weights[0].in_features)


class BlockQ4Weight(_PackedWeight):
    """4-bit codes with fp16 scales per 32-block: GGUF Q4_1 and our int4-gN (d, m), GGUF Q4_0 (d only:
    w = d * (code - 8), which the kernel reads without the m GGUF Q4_0 does not store)."""

    kind = "int4"

    def __init__(self, qs: torch.Tensor, dm: torch.Tensor, in_features: int):
        """qs uint8 [N, G, 16] (GGUF nibble order: byte j holds value j low, j + 16 high); dm float16
        [N, G, 2] (d, m), w = d * code + m. Blocks whose m is -8 d throughout are Q4_0."""
        d, m = dm[..., 0].to(torch.float16), dm[..., 1].to(torch.float16)
        symmetric = torch.equal(m, -8 * d) if m.numel() else False
        fmt = Q4_0 if symmetric else Q4_1
        super().__init__(_pack(qs.to(torch.uint8), [d] if symmetric else [d, m]), fmt, qs.shape[0], in_features)

    @classmethod
    def from_codes(cls, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, group_size: int,
                   in_features: int) -> "BlockQ4Weight":
        """q: codes 0..15 [N, Kp]; d, m: [N, Kp / group_size], w = d * q + m. A group of 64 or 128
        values becomes 2 or 4 blocks with the same scales."""
        N = q.shape[0]
        G = -(-in_features // BLOCK)
        q = F.pad(q[:, :in_features].to(torch.uint8), (0, G * BLOCK - in_features)).view(N, G, BLOCK)
        repeat = group_size // BLOCK
        d = d.repeat_interleave(repeat, dim=1)[:, :G]
        # padded codes are 0: m would count for them, so their (zero) activations must not: the kernel
        # pads activations with zeros too, and m * sum(x) only sums real values
        m = m.repeat_interleave(repeat, dim=1)[:, :G]
        qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << 4)
        return cls(qs, torch.stack([d, m], dim=-1).to(torch.float16), in_features)

    def _parts(self):
        codes, scales = _unpack(self.packed, self.out_features, BLOCK // 2, 2 if self.format == Q4_1 else 1)
        d = scales[0]
        return codes, torch.stack([d, scales[1] if self.format == Q4_1 else -8 * d], dim=-1)

    @classmethod
    def _from_parts(cls, parts, in_features):
        return cls(torch.cat([qs for qs, _ in parts]), torch.cat([dm for _, dm in parts]), in_features)

    @property
    def qs(self) -> torch.Tensor:
        """uint8 [N, G, 16] in GGUF's nibble order."""
        return self._parts()[0]

    @property
    def dm(self) -> torch.Tensor:
        """float16 [N, G, 2]: (d, m), m = -8 d for Q4_0."""
        return self._parts()[1]

    def codes(self) -> torch.Tensor:
        """uint8 [N, G * 32], value order."""
        qs = self.qs
        return torch.cat([qs & 0x0F, qs >> 4], dim=-1).reshape(self.out_features, -1)


class BlockQ8Weight(_PackedWeight):
    """int8 codes with one fp16 d per 32-block: GGUF Q8_0, our int8 (its per-row scale repeated)."""

    kind = "int8"

    def __init__(self, qs: torch.Tensor, d: torch.Tensor, in_features: int):
        """qs int8 [N, G, 32]; d float16 [N, G]. Stored plus 128 as unsigned bytes (what the kernel multiplies)."""
        unsigned = (qs.to(torch.int16) + 128).to(torch.uint8)
        super().__init__(_pack(unsigned, [d.to(torch.float16)]), Q8_0, qs.shape[0], in_features)

    @classmethod
    def from_codes(cls, q: torch.Tensor, d: torch.Tensor, in_features: int) -> "BlockQ8Weight":
        """q int8 [N, K or more]; d [N] (per row) or [N, G] (per block)."""
        N = q.shape[0]
        G = -(-in_features // BLOCK)
        q = F.pad(q[:, :in_features], (0, G * BLOCK - in_features)).view(N, G, BLOCK)
        d = d[:, None].expand(N, G) if d.dim() == 1 else d
        return cls(q, d.to(torch.float16), in_features)

    def _parts(self):
        codes, (d,) = _unpack(self.packed, self.out_features, BLOCK, 1)
        return (codes.to(torch.int16) - 128).to(torch.int8), d

    @classmethod
    def _from_parts(cls, parts, in_features):
        return cls(torch.cat([qs for qs, _ in parts]), torch.cat([d for _, d in parts]), in_features)

    @property
    def qs(self) -> torch.Tensor:
        return self._parts()[0]

    @property
    def d(self) -> torch.Tensor:
        return self._parts()[1]
