"""Int8 weight-only storage: symmetric, one scale per output channel (or per group of a row).

Per channel is what we quantize fp weights to, and what PyTorch's `_weight_int8pack_mm` kernel
multiplies directly. Groups exist for GGUF Q8_0 (one fp16 scale per 32 values): those tensors
stay as they were stored, and the matmul runs the same kernel once per group column, which is
exact and reads every weight byte once.

Shapes: N output features (rows), K input features, G groups per row, g values per group.
"""
from __future__ import annotations

import torch

from engine.quant import kernels

QMAX = 127  # symmetric: -127..127, so negating a weight never overflows


class Int8Weight:
    kind = "int8"
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None):
        """q: int8 [N, K]; scale: [N] (per channel) or [N, G] with group_size g (K = G*g)."""
        self.group_size = group_size
        self.shape = tuple(q.shape)
        if group_size is None:
            self.q, self.scale = q.contiguous(), scale.contiguous()
        else:
            N, K = q.shape
            # [G, N, g]: each group column is one contiguous int8 matrix the kernel can take as is
            self.q = q.view(N, K // group_size, group_size).permute(1, 0, 2).contiguous()
            self.scale = scale.t().contiguous()  # [G, N]

    @classmethod
    def quantize(cls, w: torch.Tensor) -> "Int8Weight":
        """Per-output-channel symmetric int8 from a float weight [N, K]."""
        w = w.detach().float()
        scale = (w.abs().amax(dim=1) / QMAX).clamp(min=1e-12)  # an all-zero row keeps a usable scale
        q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
        return cls(q, scale)

    def to(self, device=None, dtype=None) -> "Int8Weight | kernels.BlockQ8Weight":
        """Move to a device; scales take the activations' float dtype (the kernel wants them equal).
        On the CPU with rounded activations (a bf16/fp16 compute dtype) and Glassbox's kernels loaded,
        returns their BlockQ8Weight instead: the same codes, scales in fp16 (engine/quant/kernels.py)."""
        if device is not None and kernels.wants_kernels(device, dtype):
            if self.group_size is None:
                return kernels.BlockQ8Weight.from_codes(self.q, self.scale, self.shape[1])
            return kernels.BlockQ8Weight.from_codes(self.q.permute(1, 0, 2).reshape(self.shape), self.scale.t(),
                                                    self.shape[1])
        self.q = self.q.to(device)
        self.scale = self.scale.to(device=device, dtype=dtype)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype the matmul expects (set by .to(device, dtype))."""
        return self.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantize(self) -> torch.Tensor:
        """Float weight [N, K] (for tests, the reference path and re-quantization)."""
        if self.group_size is None:
            return self.q.to(self.scale.dtype) * self.scale[:, None]
        G, N, g = self.q.shape
        return (self.q.to(self.scale.dtype) * self.scale[:, :, None]).permute(1, 0, 2).reshape(N, G * g)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows for an embedding lookup: ids [...] -> [..., K]."""
        if self.group_size is None:
            return self.q[ids].to(self.scale.dtype) * self.scale[ids].unsqueeze(-1)
        G, N, g = self.q.shape
        picked = self.q[:, ids].to(self.scale.dtype) * self.scale[:, ids].unsqueeze(-1)  # [G, ..., g]
        return picked.movedim(0, -2).reshape(*ids.shape, G * g)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] @ W.T -> [..., N]."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.group_size is None:
            y = _int8_mm(x2, self.q, self.scale)
        else:
            g = self.group_size
            y = _int8_mm(x2[:, :g], self.q[0], self.scale[0])
            for i in range(1, self.q.shape[0]):
                y += _int8_mm(x2[:, i * g:(i + 1) * g], self.q[i], self.scale[i])
        return y.reshape(*lead, y.shape[-1])


def _int8_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dtype == scale.dtype:
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), q, scale)
    # Other devices and dtypes: the per-channel scale factors out of the matmul, so only the int8
    # -> float conversion of the weight is extra work, and the result is the same.
    return (x @ q.to(x.dtype).t()) * scale.to(x.dtype)
