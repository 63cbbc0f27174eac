"""Glassbox's own quantized matmul kernels (C++, engine/quant/csrc/, built at install) and the weights
laid out for them. Owns loading the compiled ops and the block layout; the PyTorch-kernel weights
(int4.py, int8.py) turn into these when the ops are loaded and their activations may be rounded.

Layout (as GGUF stores it, so Q4_0 / Q4_1 / Q8_0 blocks keep their bits): 32 values per block,
fp16 scales. q4: codes 0..15, byte j of a block holds value j (low nibble) and j + 16 (high one),
w = d * code + m. q8: int8 codes, w = d * code. Rows are padded with zero codes to whole blocks.
The kernels round each activation block to 8 bits (xq = round(x / dx), dx = max|x| / 127) and sum
integer products, as llama.cpp does; activations in a narrower float add nothing, so the weights
take float32 in (compute_dtype) and avoid two casts per call.

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
# From this many activation rows on, one GEMM over the weight dequantized by the kernel (fp32, exact)
# beats a dot product per row and output (the prefill of a prompt); measured in docs/benchmarks.md.
GEMM_ROWS = 64
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


class BlockQ4Weight:
    """4-bit codes with one (d, m) fp16 pair per 32-block: GGUF Q4_0 / Q4_1, our int4-gN."""

    kind = "int4"
    compute_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, qs: torch.Tensor, dm: torch.Tensor, in_features: int):
        """qs uint8 [N, G, 16] (GGUF nibble order); dm float16 [N, G, 2] (d, m)."""
        self.qs, self.dm = qs.contiguous(), dm.contiguous()
        self.out_features, self.in_features = qs.shape[0], in_features
        self.shape = (self.out_features, in_features)

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

    def to(self, device=None, dtype=None) -> "BlockQ4Weight":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("glassbox kernel weights live on the CPU; build the model on its device instead")
        return self

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + self.dm.numel() * 2

    def codes(self) -> torch.Tensor:
        """uint8 [N, G * 32], value order."""
        return torch.cat([self.qs & 0x0F, self.qs >> 4], dim=-1).reshape(self.out_features, -1)

    def _values(self, qs: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
        codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1).float()  # [..., G, 32]
        dm = dm.float()
        return (codes * dm[..., :1] + dm[..., 1:]).flatten(-2)[..., : self.in_features]

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: d * code + m with fp16 scales widened exactly, as the kernel reads them."""
        return torch.ops.glassbox.q4_dequantize(self.qs, self.dm, self.in_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        return self._values(self.qs[flat], self.dm[flat]).reshape(*ids.shape, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= GEMM_ROWS * x.shape[-1]:
            return F.linear(x, self.dequantize().to(x.dtype))
        return torch.ops.glassbox.q4_linear(x, self.qs, self.dm)

    @classmethod
    def concat(cls, weights: list["BlockQ4Weight"]) -> "BlockQ4Weight | None":
        if any(w.in_features != weights[0].in_features for w in weights):
            return None
        return cls(torch.cat([w.qs for w in weights]), torch.cat([w.dm for w in weights]), weights[0].in_features)


class BlockQ8Weight:
    """int8 codes with one fp16 d per 32-block: GGUF Q8_0, our int8 (its per-row scale repeated)."""

    kind = "int8"
    compute_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, qs: torch.Tensor, d: torch.Tensor, in_features: int):
        """qs int8 [N, G, 32]; d float16 [N, G]."""
        self.qs, self.d = qs.contiguous(), d.contiguous()
        self.out_features, self.in_features = qs.shape[0], in_features
        self.shape = (self.out_features, in_features)

    @classmethod
    def from_codes(cls, q: torch.Tensor, d: torch.Tensor, in_features: int) -> "BlockQ8Weight":
        """q int8 [N, K or more]; d [N] (per row) or [N, G] (per block)."""
        N = q.shape[0]
        G = -(-in_features // BLOCK)
        q = F.pad(q[:, :in_features], (0, G * BLOCK - in_features)).view(N, G, BLOCK)
        d = d[:, None].expand(N, G) if d.dim() == 1 else d
        return cls(q, d.to(torch.float16), in_features)

    to = BlockQ4Weight.to

    @property
    def nbytes(self) -> int:
        return self.qs.numel() + self.d.numel() * 2

    def dequantize(self) -> torch.Tensor:
        return torch.ops.glassbox.q8_dequantize(self.qs, self.d, self.in_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        values = (self.qs[flat].float() * self.d[flat].float()[..., None]).flatten(-2)[:, : self.in_features]
        return values.reshape(*ids.shape, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= GEMM_ROWS * x.shape[-1]:
            return F.linear(x, self.dequantize().to(x.dtype))
        return torch.ops.glassbox.q8_linear(x, self.qs, self.d)

    @classmethod
    def concat(cls, weights: list["BlockQ8Weight"]) -> "BlockQ8Weight | None":
        if any(w.in_features != weights[0].in_features for w in weights):
            return None
        return cls(torch.cat([w.qs for w in weights]), torch.cat([w.d for w in weights]), weights[0].in_features)
