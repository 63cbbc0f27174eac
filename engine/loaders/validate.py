"""What a complete checkpoint must hold: the canonical tensor names and shapes a ModelConfig
implies (docs/weights.md). Every loader ends by calling check_tensors, so the model itself can
trust its inputs."""
from __future__ import annotations

from engine.config import ModelConfig
from engine.errors import ModelFormatError
from engine.layers.mla import mla_shapes


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    D, H, K, d = c.dim, c.n_heads, c.n_kv_heads, c.head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (c.vocab_size, D), "norm.weight": (D,)}
    if not c.tie_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, D)
    for i in range(c.n_layers):
        p = f"layers.{i}."
        shapes[p + "attn_norm.weight"] = (D,)
        shapes[p + "mlp_norm.weight"] = (D,)
        if c.post_norms:
            shapes[p + "attn_post_norm.weight"] = shapes[p + "mlp_post_norm.weight"] = (D,)
        for name, rows in (("wq", H * d), ("wk", K * d), ("wv", K * d)):
            shapes[f"{p}attn.{name}.weight"] = (rows, D)
            if c.qkv_bias:
                shapes[f"{p}attn.{name}.bias"] = (rows,)
        shapes[p + "attn.wo.weight"] = (D, H * d)
        if c.o_bias:
            shapes[p + "attn.wo.bias"] = (D,)
        if c.qk_norm != "none":
            q, k = (d, d) if c.qk_norm == "head" else (H * d, K * d)
            shapes[p + "attn.q_norm.weight"], shapes[p + "attn.k_norm.weight"] = (q,), (k,)
        if c.attn_sinks:
            shapes[p + "attn.sinks"] = (H,)
        if c.mla is not None:  # latent attention (engine/layers/mla.py) replaces the per-head projections above
            for name in [n for n in shapes if n.startswith(p + "attn.")]:
                del shapes[name]
            shapes.update(mla_shapes(c, p))
        if c.moe_layers[i]:
            E, I = c.moe.n_experts, c.moe.expert_hidden_dim
            shapes[p + "mlp.router.weight"] = (E, D)
            shapes[p + "mlp.w_gate"] = shapes[p + "mlp.w_up"] = (E, I, D)
            shapes[p + "mlp.w_down"] = (E, D, I)
            if c.moe.router_bias:
                shapes[p + "mlp.router.bias"] = (E,)
            if c.moe.expert_bias:
                shapes[p + "mlp.b_gate"] = shapes[p + "mlp.b_up"] = (E, I)
                shapes[p + "mlp.b_down"] = (E, D)
            if S := c.moe.shared_expert_hidden_dim:
                shapes[p + "mlp.shared.w_gate.weight"] = shapes[p + "mlp.shared.w_up.weight"] = (S, D)
                shapes[p + "mlp.shared.w_down.weight"] = (D, S)
                if c.moe.shared_expert_gated:
                    shapes[p + "mlp.shared_gate.weight"] = (1, D)
        else:
            shapes[p + "mlp.w_gate.weight"] = shapes[p + "mlp.w_up.weight"] = (c.hidden_dim, D)
            shapes[p + "mlp.w_down.weight"] = (D, c.hidden_dim)
    return shapes


def check_tensors(tensors: dict, config: ModelConfig, path) -> None:
    """Raise ModelFormatError naming the first missing or mis-shaped tensor; drop nothing silently."""
    expected = expected_shapes(config)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelFormatError(path, f"missing tensors: {', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelFormatError(path, f"tensor {name} has shape {tuple(tensors[name].shape)}, "
                                         f"the config implies {shape}")
    for name in [n for n in tensors if n not in expected]:
        del tensors[name]  # e.g. rotary caches some exporters save; the model has no slot for them
