"""A decode step of a llama-family model on the CPU in one call to C++ (engine/quant/csrc/decode.cpp).

A decoded token of the default model used to be ~1,100 PyTorch operator calls from Python, each a few
microseconds of dispatch: as much time as all of its matmuls. The C++ step does the same arithmetic (our
quantized kernels; RMSNorm, RoPE, attention read straight from the paged pool and SiLU as plain loops) with
nothing between the pieces. Only float summation order differs from the Python path, which the 8-bit
activation rounding can amplify at a rounding edge: tests/engine/test_fused_decode.py holds the two together.

It covers the plain llama shape with the weights in our kernels' packed layout: fused q/k/v (with or
without biases: Qwen2), RMSNorm, full-width RoPE of any scaling (the table is computed here, in Python,
as the model does), GQA, SwiGLU, float32 pools. Anything else (MoE, MLA, windows, soft-caps, post-norms,
q/k-norm, bf16, PyTorch's kernels...) keeps the Python path, as do steps the runner must see inside:
a probe that records attention, interventions and LoRA adapters (engine/runtime/runner.py checks those).
Shape legend: B sequences in the step, d head_dim, V vocab.
"""
from __future__ import annotations

import torch

from engine.layers.rope import sign_folded_sin
from engine.quant import kernels


def why_not(model, pool) -> str | None:
    """None when every decode step of this model can take the C++ step, else the first reason it cannot."""
    from engine.quant.modules import QuantEmbedding, QuantLinear

    config = model.config
    if not kernels.available():
        return "Glassbox's kernels are not loaded"
    if pool.k.device.type != "cpu" or pool.k.dtype != torch.float32:
        return "the KV pool is not float32 on the CPU"
    plain = {"MoE layers": any(config.moe_layers), "MLA": config.mla is not None,
             "sliding windows": any(w is not None for w in config.sliding_windows),
             "a local RoPE table": config.local_rope_theta is not None, "NoPE layers": not all(config.rope_layers or [True]),
             "partial rotary": config.rotary_dim not in (0, config.head_dim), "q/k-norm": config.qk_norm != "none",
             "clipped q/k/v": config.clip_qkv is not None, "an output-projection bias": config.o_bias,
             "attention sinks": config.attn_sinks, "soft-capped logits": config.attn_logit_softcap is not None
             or config.final_logit_softcap is not None, "post-norms": config.post_norms,
             "scaled sublayers or logits": config.residual_multiplier != 1.0 or config.logit_divisor != 1.0
             or config.embed_scale != 1.0, "offset norms": config.norm_weight_offset != 0.0,
             "a GELU MLP": config.mlp_activation != "silu"}
    for what, present in plain.items():
        if present:
            return f"the model has {what}"

    def packed(module) -> bool:
        return isinstance(module, QuantLinear) and isinstance(module.qweight, kernels._PackedWeight)

    for layer in model.layers:
        attn, mlp = layer.attn, layer.mlp
        if not (packed(attn.wqkv) and packed(attn.wo) and attn.wo.bias is None and packed(mlp.w_gate_up)
                and packed(mlp.w_down)):
            return "a layer's weights are not all in the kernels' packed layout"
        if any(norm.weight.dtype != torch.float32 for norm in (layer.attn_norm, layer.mlp_norm)):
            return "the norms are not float32"
    if model.norm.weight.dtype != torch.float32:
        return "the norms are not float32"
    biases = [layer.attn.wqkv.bias for layer in model.layers]
    if any(b is not None for b in biases) and not all(b is not None and b.dtype == torch.float32 for b in biases):
        return "the q/k/v biases are not float32 in every layer"
    tied = model.lm_head is None and isinstance(model.embed, QuantEmbedding) \
        and isinstance(model.embed.qweight, kernels._PackedWeight)
    if not (tied or (model.lm_head is not None and packed(model.lm_head) and model.lm_head.bias is None)):
        return "the LM head is not in the kernels' packed layout"
    return None


class FusedDecoder:
    """The weights handed over once; `decode` runs one step for B sequences through the paged pool."""

    def __init__(self, model, pool):
        self.model, self.pool = model, pool
        config = model.config
        norms, linears = [], []
        for layer in model.layers:
            norms += [layer.attn_norm.weight.detach(), layer.mlp_norm.weight.detach()]
            linears += [layer.attn.wqkv, layer.attn.wo, layer.mlp.w_gate_up, layer.mlp.w_down]
        norms.append(model.norm.weight.detach())
        weights = [m.qweight for m in linears] + [(model.lm_head or model.embed).qweight]
        self.norms = norms
        self.packed = [w.packed for w in weights]
        self.formats = [w.format for w in weights]
        self.rows = [w.out_features for w in weights]
        biases = [layer.attn.wqkv.bias for layer in model.layers]
        self.biases = [b.detach() for b in biases] if all(b is not None for b in biases) else []
        self.heads, self.kv_heads = config.n_heads, config.n_kv_heads
        self.eps, self.scale = config.norm_eps, config.query_scale

    def decode(self, tokens: torch.Tensor, view) -> torch.Tensor:
        """tokens [B, 1] at view.positions [B, 1] (their slots reserved in the view): fp32 logits [B, 1, V],
        what model(tokens, view) returns."""
        cos, sin = self.model.rope.cos_sin(view.positions, getattr(view, "rope_long", None))  # [B, 1, d]
        embedded = self.model.embed(tokens)[:, 0]  # [B, D]
        logits = torch.ops.glassbox.decode_step(
            embedded.float().contiguous(), cos.float().contiguous(), sign_folded_sin(sin.float()).contiguous(),
            view.slots, view.block_tables, view.context_lens, self.pool.block_size, self.pool.k, self.pool.v,
            self.norms, self.packed, self.formats, self.rows, self.biases, self.heads, self.kv_heads, self.eps,
            self.scale)
        return logits.unsqueeze(1)
