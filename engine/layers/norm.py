"""RMSNorm, computed in fp32 whatever the weights' dtype (as the reference implementations do)."""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps = eps
        self.offset = offset  # Gemma stores weight - 1 and scales by (1 + weight)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.offset:
            # Gemma's order: scale in fp32 by (offset + weight), cast last (its weights are near 0, so a
            # bf16 (1 + weight) or a cast before scaling would round differently from the reference).
            scale = self.weight.float() + self.offset
            if dtype == torch.float32:
                return F.rms_norm(x, self.weight.shape, scale, self.eps)
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * scale).to(dtype)
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op instead of eight; the same numbers in fp32 (checked in tests/engine/test_fast_paths.py).
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before scaling: bf16/fp16 results then round exactly like HF's.
        return self.weight * x32.to(dtype)
