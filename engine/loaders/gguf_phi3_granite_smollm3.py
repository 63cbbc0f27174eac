"""GGUF files of Phi-3, Granite and SmolLM3 as llama.cpp's converter writes them: what their metadata means
beyond the shared keys (gguf_config.py reads those), and Phi-3's fused tensors split into canonical names.

- phi3: LongRoPE's factors are two tensors (`rope_factors_long` / `rope_factors_short`), the trained context
  `rope.scaling.original_context_length`, the attention factor `rope.scaling.attn_factor`; q/k/v are one
  `attn_qkv` and gate/up one `ffn_up` (gate rows first); `rope.dimension_count` < head_dim is partial rotary.
- granite: `embedding_scale`, `residual_scale`, `attention.scale`, `logit_scale` (logits are divided by it).
- smollm3: no key says which layers skip RoPE; llama.cpp hard-codes every 4th, and so do we.
"""
from __future__ import annotations

import torch

from engine.config import RopeScaling
from engine.quant.gguf_blocks import PackedGGUF

ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")
SMOLLM3_NO_ROPE_STEP = 4  # llama.cpp's n_no_rope_layer_step for smollm3 (not stored in the file)


def longrope_scaling(k, rope_factors: tuple[torch.Tensor, torch.Tensor]) -> RopeScaling:
    """`k` is gguf_config's typed key reader; rope_factors (long, short) as read from the file."""
    long, short = (f.double().flatten() for f in rope_factors)
    if long.numel() != short.numel() or not bool(torch.isfinite(torch.cat([long, short])).all()):
        k.fail("rope.dimension_count", f"rope factors of {long.numel()} and {short.numel()} values do not pair up")
    context = k.int("context_length", 2048)
    original = k.int("rope.scaling.original_context_length", context)
    return RopeScaling(rope_type="longrope", factor=context / original, original_max_position=original,
                       attention_factor=k.float("rope.scaling.attn_factor", None),
                       short_factor=tuple(short.tolist()), long_factor=tuple(long.tolist()))


def extra_fields(k, arch: str, n_layers: int) -> dict:
    """ModelConfig keyword arguments for the mechanisms these architectures add (empty for the others)."""
    if arch == "granite":
        return dict(embed_scale=k.float("embedding_scale", 1.0), residual_multiplier=k.float("residual_scale", 1.0),
                    query_scale=k.float("attention.scale", None), logit_divisor=k.float("logit_scale", 1.0))
    if arch == "smollm3":
        return dict(rope_layers=tuple((i + 1) % SMOLLM3_NO_ROPE_STEP != 0 for i in range(n_layers)))
    return {}


def _split_rows(t, sizes: tuple[int, ...]) -> list:
    if isinstance(t, PackedGGUF):  # rows are whole blocks: split the bytes
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [PackedGGUF(t.kind, (n, t.shape[1]), t.raw[a:a + n]) for a, n in zip(starts, sizes)]
    return list(t.split(sizes))


def split_fused(tensors: dict, config, path) -> None:
    """Phi-3's `attn_qkv` (renamed attn.wqkv) and double-height `ffn_up` -> wq/wk/wv and w_gate/w_up, in place."""
    from engine.errors import ModelFormatError

    H, K, d, I = config.n_heads, config.n_kv_heads, config.head_dim, config.hidden_dim
    for i in range(config.n_layers):
        p = f"layers.{i}."
        for suffix in ("weight", "bias"):
            fused = tensors.pop(f"{p}attn.wqkv.{suffix}", None)
            if fused is None:
                continue
            if fused.shape[0] != (H + 2 * K) * d:
                raise ModelFormatError(path, f"blk.{i}.attn_qkv has {fused.shape[0]} rows, the config implies "
                                             f"{(H + 2 * K) * d}")
            for name, part in zip("qkv", _split_rows(fused, (H * d, K * d, K * d))):
                tensors[f"{p}attn.w{name}.{suffix}"] = part
        up = tensors.get(f"{p}mlp.w_up.weight")
        if f"{p}mlp.w_gate.weight" not in tensors and up is not None and up.shape[0] == 2 * I:
            tensors[f"{p}mlp.w_gate.weight"], tensors[f"{p}mlp.w_up.weight"] = _split_rows(up, (I, I))
