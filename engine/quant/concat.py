"""Stack linear layers that read the same input into one (fused QKV, fused gate/up projections).

One wide matmul instead of two or three narrow ones: fewer kernel calls, casts and Python module
calls per layer, and the input is converted to the kernels' dtype once. Every output row is computed
from its own weight row only, so the fused layer's outputs are the parts' outputs side by side; the
weights are concatenated as stored (float, int8, packed int4), never re-quantized.
Returns None when the parts cannot share one weight (different kinds, group sizes, dtypes or devices):
the caller then keeps them separate.
Shapes: N_i output features of part i, K input features, G groups per row.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.mla import MLAttention
from engine.layers.mlp import SwiGLU
from engine.quant.int4 import Int4Weight
from engine.quant.int8 import Int8Weight
from engine.quant.kernels import BlockQ4Weight, BlockQ8Weight
from engine.quant.modules import QuantLinear



def concat_linears(parts: list[nn.Module]) -> nn.Module | None:
    """One module whose output is torch.cat([part(x) for part in parts], -1)."""
    if all(type(p) is nn.Linear for p in parts):
        return _concat_float(parts)
    if all(type(p) is QuantLinear for p in parts):
        weight = concat_weights([p.qweight for p in parts])
        if weight is None:
            return None
        biases = [p.bias for p in parts]
        if all(b is None for b in biases):
            return QuantLinear(weight)
        return QuantLinear(weight, torch.cat([_bias_or_zeros(b, p.out_features, p) for b, p in zip(biases, parts)]))
    return None


def _bias_or_zeros(bias, n: int, part: nn.Module) -> torch.Tensor:
    if bias is not None:
        return bias.detach()
    ref = next((p for p in part.parameters()), None)
    return torch.zeros(n, dtype=ref.dtype if ref is not None else torch.float32)


def _concat_float(parts: list[nn.Linear]) -> nn.Linear | None:
    w0 = parts[0].weight
    if any(p.weight.dtype != w0.dtype or p.weight.device != w0.device or p.in_features != parts[0].in_features
           for p in parts):
        return None
    has_bias = any(p.bias is not None for p in parts)
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=has_bias,
                      device="meta")
    fused.weight = nn.Parameter(torch.cat([p.weight.detach() for p in parts]), requires_grad=False)
    if has_bias:
        bias = [p.bias.detach() if p.bias is not None else torch.zeros(p.out_features, dtype=w0.dtype, device=w0.device)
                for p in parts]
        fused.bias = nn.Parameter(torch.cat(bias), requires_grad=False)
    return fused


def concat_weights(weights: list) -> Int8Weight | Int4Weight | None:
    if all(type(w) is Int8Weight for w in weights):
        return _concat_int8(weights)
    if all(type(w) is Int4Weight for w in weights):
        return Int4Weight.concat(weights)
    for kind in (BlockQ4Weight, BlockQ8Weight):  # Glassbox's kernels' block layout: rows stack as they are
        if all(type(w) is kind for w in weights):
            return kind.concat(weights)
    return None


def _concat_int8(weights: list[Int8Weight]) -> Int8Weight | None:
    first = weights[0]
    same = all(w.group_size == first.group_size and w.shape[1] == first.shape[1] and w.q.device == first.q.device
               and w.scale.dtype == first.scale.dtype for w in weights)
    if not same:
        return None
    fused = Int8Weight.__new__(Int8Weight)
    fused.group_size = first.group_size
    fused.shape = (sum(w.shape[0] for w in weights), first.shape[1])
    dim = 0 if first.group_size is None else 1  # per channel: q [N, K], scale [N]; grouped: q [G, N, g], scale [G, N]
    fused.q = torch.cat([w.q for w in weights], dim=dim)
    fused.scale = torch.cat([w.scale for w in weights], dim=-1 if dim else 0)
    return fused


def fuse_projections(model) -> int:
    """Stack each attention's q/k/v and each SwiGLU's gate/up weights into one linear (as stored:
    float, int8 or packed int4), so a layer runs 4 matmuls instead of 7. The outputs are the same
    numbers up to the BLAS's summation order for the wider matmul. Layers whose weights differ in kind
    stay separate. Returns how many projections were fused. Lives here, not in engine/model.py, so the
    model file stays float-only and knows nothing of quantized layouts."""
    fused = 0
    for block in model.layers:
        attn = block.attn
        # MLA (engine/layers/mla.py) has no q/k/v triple: its projections read different inputs
        if not isinstance(attn, MLAttention) and attn.wqkv is None and \
                (qkv := concat_linears([attn.wq, attn.wk, attn.wv])) is not None:
            attn.wqkv, attn.wq, attn.wk, attn.wv = qkv, None, None, None
            fused += 1
        mlp = getattr(block.mlp, "shared", None) if block.is_moe else block.mlp
        if isinstance(mlp, SwiGLU) and mlp.w_gate_up is None:
            if (gate_up := concat_linears([mlp.w_gate, mlp.w_up])) is not None:
                mlp.w_gate_up, mlp.w_gate, mlp.w_up = gate_up, None, None
                fused += 1
    return fused
