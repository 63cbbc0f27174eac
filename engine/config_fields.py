"""What the config.json of Phi-3, Granite and SmolLM3 means beyond the fields every architecture shares
(engine/config.py reads those): LongRoPE's parameters, the Granite multipliers, SmolLM3's NoPE layers,
partial rotary. Plain dict -> dict translation; builds no ModelConfig and imports nothing of the engine.
"""
from __future__ import annotations

ARCHITECTURES = ("phi3", "granite", "smollm3")


def hf_rope_params(arch: str, hf: dict, params: dict) -> dict:
    """The `rope_scaling` / `rope_parameters` dict with LongRoPE's implicit values made explicit,
    as transformers fills them in."""
    params = dict(params or {})
    kind = params.get("rope_type", params.get("type"))
    if arch == "phi3" and kind in ("su", "yarn"):  # Phi3Config reads both older names as LongRoPE
        kind = params["rope_type"] = "longrope"
    if kind not in ("su", "longrope"):
        return params
    # A top-level original_max_position_embeddings (Phi-3's configs keep it there) wins over the dict's.
    original = int(hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
                   or hf.get("max_position_embeddings") or 0)
    if original <= 0:
        raise ValueError("LongRoPE needs original_max_position_embeddings")
    params["original_max_position_embeddings"] = original
    if params.get("factor") is None:  # the stretch is then how far the context grew past the trained one
        params["factor"] = int(hf.get("max_position_embeddings") or original) / original
    return params


def hf_extra_fields(arch: str, hf: dict, n_layers: int, head_dim: int, rope_params: dict) -> dict:
    """ModelConfig keyword arguments for the mechanisms these architectures add (empty for the others)."""
    fields: dict = {}
    partial = rope_params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        fields["rotary_dim"] = int(head_dim * float(partial))  # transformers truncates the same way
    if arch not in ARCHITECTURES:
        return fields
    if (hf.get("hidden_act") or "silu") != "silu":
        raise ValueError(f"hidden_act {hf.get('hidden_act')!r} ({arch} runs silu)")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias is set; Glassbox's MLP has no biases (no released checkpoint uses them)")
    if arch == "granite":
        fields.update(embed_scale=float(hf.get("embedding_multiplier", 1.0)),
                      residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
                      query_scale=float(hf.get("attention_multiplier", 1.0)),
                      logit_divisor=float(hf.get("logits_scaling", 1.0)))
        if fields["logit_divisor"] == 0:
            raise ValueError("logits_scaling is 0")
    elif arch == "smollm3":
        # no_rope_layers[i] = 1 means layer i *uses* RoPE (the name says the opposite); without the list,
        # every interval-th layer is a NoPE layer
        flags = hf.get("no_rope_layers")
        if flags is None:
            interval = int(hf.get("no_rope_layer_interval") or 4)
            flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if len(flags) != n_layers:
            raise ValueError(f"no_rope_layers has {len(flags)} entries for {n_layers} layers")
        fields["rope_layers"] = tuple(bool(f) for f in flags)
    return fields
