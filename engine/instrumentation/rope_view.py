"""What a RoPE scaling does per dimension pair, from a config alone: the inverse frequencies the model's
RopeTable would use, beside the unscaled ones. No weights, no forward pass: cheap enough to recompute
whenever the model panel's choice changes. The scaling rules themselves live in engine/layers/rope.py.
"""
from __future__ import annotations

from engine.config import ModelConfig, RopeScaling
from engine.layers.rope import rope_inv_freq
from engine.records import RopeView


def rope_view(config: ModelConfig, context: int = 0, trained_context: int | None = None) -> RopeView:
    """RoPE under `config`'s scaling at `context` tokens (0: config.max_seq_len, the usable context).

    `trained_context` is the checkpoint's own max_position_embeddings, shown when the scaling does not
    name its original context (an unscaled model loaded with a longer context_length); the frequencies
    take the original context exactly as RopeTable does, so they always equal the layer's.
    """
    scaling = config.rope_scaling
    context = context or config.max_seq_len
    width = config.rotary_dim  # the dims RoPE turns: the whole head unless it is partial rotary
    # RopeTable.cos_sin takes the length as the largest position + 1: a sequence of `context` tokens
    inv_freq, attention_scaling = rope_inv_freq(width, config.rope_theta, scaling, config.max_seq_len,
                                                seq_len=context)
    base_inv_freq, _ = rope_inv_freq(width, config.rope_theta, RopeScaling(), config.max_seq_len)
    other = ()
    if scaling.rope_type == "longrope":  # the factor list `context` does not select, drawn beside it
        original = scaling.original_max_position or config.max_seq_len
        other_len = original if context > original else original + 1
        other = tuple(rope_inv_freq(width, config.rope_theta, scaling, config.max_seq_len, other_len)[0].tolist())
    return RopeView(
        other_inv_freq=other, nope_layers=tuple(i for i, rotates in enumerate(config.rope_layers) if not rotates),
        head_width=config.head_dim if width != config.head_dim else 0,
        local_layers=tuple(i for i, w in enumerate(config.sliding_windows) if w is not None)
        if config.local_rope_theta is not None else (), local_theta=float(config.local_rope_theta or 0.0),
        scaling=scaling.rope_type, factor=float(scaling.factor), head_dim=width,
        theta=float(config.rope_theta),
        trained_context=int(scaling.original_max_position or trained_context or config.max_seq_len),
        context=int(context), inv_freq=tuple(inv_freq.tolist()), base_inv_freq=tuple(base_inv_freq.tolist()),
        attention_scaling=float(attention_scaling))
