"""Int4 weight-only storage: groups of g values along a row share a scale and an offset.

The convention is PyTorch's int4 kernels': w = (q - 8) * scale + zero, q in 0..15. Min/max
quantization picks scale = (max - min) / 15 and zero = min + 8 * scale, so q = 0 is the group's
min and q = 15 its max. GGUF Q4_1 (w = q * d + m) maps onto this exactly (scale = d,
zero = m + 8 d), and Q4_0 (w = (q - 8) * d) with zero = 0.

On the CPU the weight lives in `_weight_int4pack_mm_for_cpu`'s packed layout; on CUDA with bf16
activations in `_weight_int4pack_mm`'s tensor-core layout (checked against the dequantized weight
when packed: a GPU without the kernel keeps the fallback); elsewhere as plain nibbles [N, K/2]
with a dequantize-then-matmul path. The CPU kernel wants N divisible by 16 and
K by g: we pad with zero rows / columns (and pad x to match), so every shape works.
Shapes: N output features, K input features (Kp padded), G = Kp / g groups.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.quant import kernels

GROUP_SIZES = (32, 64, 128)
_N_MULTIPLE = 16  # the CPU packer's requirement (the CUDA one wants 8)
_PACKED_ROWS = 64  # rows the CPU layout interleaves together at most: only whole blocks stack as they are


class Int4Weight:
    kind = "int4"
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 in_features: int | None = None, keep_rows: bool = False):
        """q: integers 0..15 [N, Kp] (Kp a multiple of group_size); scale, zero: [N, Kp/g].
        in_features: the true K when Kp was padded. keep_rows: also keep the nibbles so rows can be
        looked up (an embedding table), even where the matmul uses the kernel's opaque layout."""
        N, Kp = q.shape
        self.group_size, self.out_features, self.in_features = group_size, N, in_features or Kp
        self.shape = (N, self.in_features)
        self._scale_zero = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().float()  # [G, N, 2]
        self._nibbles = _pack_nibbles(q.to(torch.uint8))  # [N, Kp/2]
        self._packed = None  # the CPU or CUDA kernel's layout, made by to(device, dtype)
        self._keep_rows = keep_rows

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int, keep_rows: bool = False) -> "Int4Weight":
        """Group-wise min/max int4 from a float weight [N, K]; K not divisible by g is zero-padded."""
        if group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {GROUP_SIZES}, not {group_size}")
        w = w.detach().float()
        N, K = w.shape
        Kp = -(-K // group_size) * group_size
        wg = F.pad(w, (0, Kp - K)).view(N, Kp // group_size, group_size)
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).view(N, Kp)
        return cls(q, scale, lo + 8 * scale, group_size, in_features=K, keep_rows=keep_rows)

    def to(self, device=None, dtype=None) -> "Int4Weight | kernels.BlockQ4Weight":
        """Move (and pack for the device's kernel). On the CPU with rounded activations (a bf16/fp16
        compute dtype) and Glassbox's kernels loaded, returns their BlockQ4Weight instead: the same
        codes, scales in fp16, no PyTorch-packed copy (engine/quant/kernels.py)."""
        device = torch.device(device) if device is not None else self._scale_zero.device
        dtype = dtype or self._scale_zero.dtype
        if kernels.wants_kernels(device, dtype):
            scale, zero = self._scale_zero[..., 0].t().float(), self._scale_zero[..., 1].t().float()  # [N, G]
            return kernels.BlockQ4Weight.from_codes(self._q(), scale, zero - 8 * scale, self.group_size,
                                                    self.in_features)
        if self._nibbles is None:  # only the kernel's layout was kept: recover the values first
            self._nibbles = _pack_nibbles(self._q())
        self._scale_zero = self._scale_zero.to(device=device, dtype=dtype)
        self._nibbles = self._nibbles.to(device)
        self._packed = None
        if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16, torch.float16):
            N = self.out_features
            q = _unpack_nibbles(self._nibbles).to(torch.int32)
            q = F.pad(q, (0, 0, 0, -N % _N_MULTIPLE))  # zero rows: their outputs are sliced off
            sz = F.pad(self._scale_zero, (0, 0, 0, -N % _N_MULTIPLE))
            self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            self._packed_scale_zero = sz.contiguous()
            if not self._keep_rows:
                self._nibbles = None  # the packed copy is the only one kept
        elif device.type == "cuda" and dtype == torch.bfloat16:
            self._pack_for_cuda()
        return self

    def _pack_for_cuda(self) -> None:
        """The tinygemm layout of `_weight_int4pack_mm` (sm80+). Its packer reads two values per
        byte; which nibble comes first is checked, not assumed: both orders are tried against the
        dequantized weight on a few input features, and a mismatch (or a GPU without the kernel)
        keeps the dequantize path."""
        N, Kp = self.out_features, self._scale_zero.shape[0] * self.group_size
        inner_k_tiles = next(t for t in (8, 4, 2) if Kp % (t * 16) == 0)  # Kp is a multiple of 32
        q = F.pad(_unpack_nibbles(self._nibbles), (0, 0, 0, -N % _N_MULTIPLE))
        sz = F.pad(self._scale_zero, (0, 0, 0, -N % _N_MULTIPLE)).contiguous()
        probe = torch.eye(Kp, device=q.device, dtype=torch.bfloat16)[: min(Kp, 64)]
        expected = (self.dequantize().to(torch.bfloat16)[:, : probe.shape[0]]).t()  # [64, N]
        for high_first in (True, False):
            pairs = (q[:, 0::2] << 4 | q[:, 1::2]) if high_first else (q[:, 0::2] | q[:, 1::2] << 4)
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack(pairs.to(torch.uint8).contiguous(), inner_k_tiles)
                got = torch.ops.aten._weight_int4pack_mm(probe, packed, self.group_size, sz)[:, :N]
            except RuntimeError:
                return  # no kernel for this GPU / build: dequantize per call
            if torch.allclose(got.float(), expected.float(), atol=1e-2, rtol=1e-2):
                # the nibbles stay too (dequantize, rows, moves): recovering them from a bf16 kernel
                # output would not be exact for every group
                self._packed, self._packed_scale_zero = packed, sz
                return

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype the matmul expects (set by .to(device, dtype))."""
        return self._scale_zero.dtype

    @property
    def device(self) -> torch.device:
        return self._scale_zero.device

    @property
    def nbytes(self) -> int:
        tensors = [self._scale_zero] + [t for t in (self._nibbles, self._packed) if t is not None]
        if self._packed is not None:
            tensors[0] = self._packed_scale_zero
        return sum(t.numel() * t.element_size() for t in tensors)

    def _q(self) -> torch.Tensor:
        if self._nibbles is not None:
            return _unpack_nibbles(self._nibbles)
        # Recover q from the kernel: multiplying the identity gives (q - 8) * scale + zero per column.
        N, Kp = self.out_features, self._scale_zero.shape[0] * self.group_size
        eye = torch.eye(Kp, dtype=self._packed_scale_zero.dtype)
        w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self._packed, self.group_size,
                                                       self._packed_scale_zero)[:, :N].t()
        s = self._scale_zero[..., 0].t().repeat_interleave(self.group_size, 1)
        z = self._scale_zero[..., 1].t().repeat_interleave(self.group_size, 1)
        return torch.round((w - z) / s + 8).clamp(0, 15).to(torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """Float weight [N, K]."""
        q = self._q().to(self._scale_zero.dtype)
        s = self._scale_zero[..., 0].t().repeat_interleave(self.group_size, 1)  # [N, Kp]
        z = self._scale_zero[..., 1].t().repeat_interleave(self.group_size, 1)
        return ((q - 8) * s + z)[:, : self.in_features]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self._nibbles is None:
            raise RuntimeError("this int4 weight was packed for matmul only (keep_rows=False)")
        q = _unpack_nibbles(self._nibbles[ids.reshape(-1)]).to(self._scale_zero.dtype)  # [n, Kp]
        sz = self._scale_zero[:, ids.reshape(-1)]  # [G, n, 2]
        s = sz[..., 0].t().repeat_interleave(self.group_size, 1)
        z = sz[..., 1].t().repeat_interleave(self.group_size, 1)
        return ((q - 8) * s + z)[:, : self.in_features].reshape(*ids.shape, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        lead, K = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, K)
        Kp = self._scale_zero.shape[0] * self.group_size
        if self._packed is not None and x2.dtype == self._packed_scale_zero.dtype:
            if Kp != K:
                x2 = F.pad(x2, (0, Kp - K))
            kernel = (torch.ops.aten._weight_int4pack_mm if x2.is_cuda else torch.ops.aten._weight_int4pack_mm_for_cpu)
            y = kernel(x2.contiguous(), self._packed, self.group_size, self._packed_scale_zero)[:, : self.out_features]
        else:
            y = x2 @ self.dequantize().to(x2.dtype).t()
        return y.reshape(*lead, self.out_features)

    @classmethod
    def concat(cls, weights: list["Int4Weight"]) -> "Int4Weight | None":
        """The weights stacked along their outputs (engine/quant/concat.py fuses q/k/v and gate/up), or
        None when their layouts cannot be stacked as they are."""
        first = weights[0]
        same = all(w.group_size == first.group_size and w.in_features == first.in_features
                   and w._scale_zero.shape[0] == first._scale_zero.shape[0] and w.device == first.device
                   and w.compute_dtype == first.compute_dtype and (w._packed is None) == (first._packed is None)
                   and (w._nibbles is None) == (first._nibbles is None) for w in weights)
        # The CPU kernel's layout interleaves rows within blocks of up to 64 (depending on the CPU's vector
        # width) and pads N to a multiple of 16: only whole 64-row blocks can be stacked as they are.
        if not same or (first._packed is not None and any(w.out_features % _PACKED_ROWS for w in weights)):
            return None
        fused = cls.__new__(cls)
        fused.group_size, fused.in_features = first.group_size, first.in_features
        fused.out_features = sum(w.out_features for w in weights)
        fused.shape = (fused.out_features, fused.in_features)
        fused._keep_rows = False
        fused._scale_zero = torch.cat([w._scale_zero for w in weights], dim=1)  # [G, N, 2]
        fused._nibbles = None if first._nibbles is None else torch.cat([w._nibbles for w in weights])
        fused._packed = None
        if first._packed is not None:
            fused._packed = torch.cat([w._packed for w in weights])
            fused._packed_scale_zero = torch.cat([w._packed_scale_zero for w in weights], dim=1)
            # The packed layouts (CPU, or CUDA's tinygemm) are PyTorch's private business: prove on one
            # input that stacking kept them, and keep the parts separate otherwise.
            x = torch.randn(2, first._scale_zero.shape[0] * first.group_size, generator=torch.Generator().manual_seed(0))
            x = x.to(device=first.device, dtype=first.compute_dtype)
            try:
                if not torch.equal(fused.matmul(x), torch.cat([w.matmul(x) for w in weights], dim=-1)):
                    return None
            except RuntimeError:
                return None
        return fused



def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values 0..15 -> [N, K/2] bytes, even column in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
