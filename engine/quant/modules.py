"""The module swaps: quantized stand-ins for nn.Linear, nn.Embedding and a MoE's stacked experts.

They hold an Int8Weight / Int4Weight (which picks the kernel) and keep the float module's call
signature, so the model code never knows. Weights are plain attributes, not Parameters: they are
not trained, and `.to()` on the model must not try to cast int8 into float.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.moe import SparseMoE

Weight = object  # Int8Weight | Int4Weight (duck-typed: matmul, rows, dequantize, nbytes, to)


class QuantLinear(nn.Module):
    def __init__(self, weight: Weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.qweight = weight
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def quant_weights(self) -> list:
        return [self.qweight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The weight's compute dtype may be narrower than x's (bf16 activations feed the CPU
        # kernels, as llama.cpp rounds activations to 8 bits for its dot products).
        dtype, compute = x.dtype, self.qweight.compute_dtype
        if dtype == compute:  # Glassbox's kernels take the model's float32 as it is: no two no-op casts per call
            y = self.qweight.matmul(x)
        else:
            y = self.qweight.matmul(x.to(compute)).to(dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {type(self.qweight).__name__}"


class QuantEmbedding(nn.Module):
    """Row lookup from a quantized table (shared with the LM head when embeddings are tied)."""

    def __init__(self, weight: Weight, dtype: torch.dtype):
        super().__init__()
        self.qweight, self.dtype = weight, dtype
        self.num_embeddings, self.embedding_dim = weight.shape

    def quant_weights(self) -> list:
        return [self.qweight]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight.rows(ids).to(self.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """Callers read .weight.dtype / .device; a zero-size tensor answers without a float copy."""
        return torch.empty(0, dtype=self.dtype, device=self.qweight.device)


class QuantSparseMoE(SparseMoE):
    """SparseMoE whose experts are quantized linears (one per expert and projection)."""

    @classmethod
    def from_float(cls, moe: SparseMoE, make_weight) -> "QuantSparseMoE":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.moe, new.router, new.shared, new.shared_gate = moe.moe, moe.router, moe.shared, moe.shared_gate
        new.b_gate, new.b_up, new.b_down = moe.b_gate, moe.b_up, moe.b_down  # float biases (gpt-oss) or None
        new.gate = [make_weight(w) for w in moe.w_gate.detach()]
        new.up = [make_weight(w) for w in moe.w_up.detach()]
        new.down = [make_weight(w) for w in moe.w_down.detach()]
        return new

    def expert_mlp(self, e: int, h: torch.Tensor) -> torch.Tensor:
        dtype, h = h.dtype, h.to(self.gate[e].compute_dtype)
        if self.b_gate is not None or self.moe.swiglu_limit is not None:  # gpt-oss: biases and clamps in h's dtype
            act = self.glu(e, self.gate[e].matmul(h).to(dtype), self.up[e].matmul(h).to(dtype))
            return self.down_bias(e, self.down[e].matmul(act.to(h.dtype)).to(dtype))
        return self.down[e].matmul(F.silu(self.gate[e].matmul(h)) * self.up[e].matmul(h)).to(dtype)

    def quant_weights(self) -> list:
        return self.gate + self.up + self.down
