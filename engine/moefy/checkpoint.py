"""A MoEfied model as a standard Hugging Face Qwen2-MoE checkpoint (config.json + safetensors +
tokenizer files), so that transformers loads it and serves as the reference.

The routing convention, and why it is exact at top-k = E
---------------------------------------------------------
MoEfication wants each selected expert to count with weight 1: the dense MLP is the plain sum of
its experts. Every MoE architecture transformers and our engine both run (Mixtral, Qwen2/3-MoE,
OLMoE) weights expert e by a softmax probability p_e(x); at top-k = E the output is Σ p_e(x)·f_e(x),
which equals the dense Σ f_e(x) for every x only if p_e(x) = 1/E, i.e. only if the router is
constant. So no informative router in those conventions is bit-exact. What we write instead:

- Qwen2-MoE with norm_topk_prob = false (weights are the plain softmax, never renormalised over
  the chosen k), and every expert's down_proj multiplied by E;
- the fitted router multiplied by a tiny factor s (`glassbox_router_scale` in config.json), chosen
  so that s·|logit| <= ROUTER_SPREAD on the collected tokens. Then E·p_e = 1 + O(ROUTER_SPREAD)
  for every expert at any k: each selected expert counts with weight 1 to fp32 rounding, and the
  order of the logits (hence which experts run) is that of the fitted scores.

At top-k = E the model is the dense model up to ~1e-6 relative per layer (tests check the logits
within 1e-4 in fp32). Experts whose scores differ by less than fp32 can resolve after the scaling
(~6e-8 / ROUTER_SPREAD of the score spread) tie; both implementations break the tie the same way
(torch.topk over identical float32 probabilities). The engine reads `glassbox_router_scale` to show
softmax(logits / s), the router's own distribution, in the routing panel and router statistics;
transformers ignores the key.

Qwen2-MoE always has a (gated) shared expert; ours has width 0 (its output is zero) unless the
split keeps one: shared_gate = 0 makes sigmoid = 1/2 exactly, so its down_proj is doubled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.config import ModelConfig, MoeConfig

ROUTER_SPREAD = 2.0 ** -20  # largest |scaled router logit| on the fit data: weights 1 ± ~1e-6
WEIGHTS_FILE = "model.safetensors"


def router_scale(routers: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[float]:
    """Per layer: the factor that brings the largest |logit| seen on the collected inputs to ROUTER_SPREAD."""
    return [ROUTER_SPREAD / max(float((h @ r.T).abs().max()), 1e-30) for r, h in zip(routers, inputs)]


def moe_config(dense: ModelConfig, n_experts: int, top_k: int, shared: int, scale: float,
               moe_layers: tuple[bool, ...] | None = None) -> ModelConfig:
    """moe_layers: which layers are MoE (default all); the others keep the dense MLP."""
    moe = MoeConfig(n_experts, top_k, (dense.hidden_dim - shared) // n_experts, router="softmax_topk",
                    norm_topk_prob=False, shared_expert_hidden_dim=shared, shared_expert_gated=True,
                    router_scale=scale)
    return dense.replace(arch="qwen2_moe", moe=moe, moe_layers=moe_layers or (True,) * dense.n_layers)


def hf_config(config: ModelConfig, tokenizer, source: str) -> dict:
    """config.json for transformers' Qwen2MoeForCausalLM (v5 names; v4 reads them too)."""
    if config.rope_scaling.rope_type != "default" or any(config.sliding_windows):
        raise ValueError("moefy writes plain-RoPE, full-attention models only")
    moe = config.moe
    return {
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "torch_dtype": "float32",
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "rms_norm_eps": config.norm_eps,
        "max_position_embeddings": config.max_seq_len, "tie_word_embeddings": config.tie_embeddings,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "qkv_bias": False, "use_sliding_window": False,
        "intermediate_size": config.hidden_dim,  # the dense source's width: the mlp_only_layers' MLP
        "moe_intermediate_size": moe.expert_hidden_dim, "num_experts": moe.n_experts,
        "num_experts_per_tok": moe.n_experts_per_tok, "norm_topk_prob": False,
        "shared_expert_intermediate_size": moe.shared_expert_hidden_dim,
        "decoder_sparse_step": 1, "mlp_only_layers": [i for i, m in enumerate(config.moe_layers) if not m],
        "bos_token_id": tokenizer.bos_id, "eos_token_id": list(tokenizer.eos_ids)[0] if tokenizer.eos_ids else None,
        "glassbox_router_scale": moe.router_scale,
        "glassbox_moefied_from": source,
    }


def hf_state(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical MoE tensors (docs/weights.md) -> Qwen2-MoE Hub names, one tensor per expert."""
    out = {"model.embed_tokens.weight": tensors["embed.weight"], "model.norm.weight": tensors["norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = tensors["lm_head.weight"]
    for i in range(config.n_layers):
        c, h = f"layers.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = tensors[c + "attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = tensors[c + "mlp_norm.weight"]
        for x in "qkvo":
            out[f"{h}self_attn.{x}_proj.weight"] = tensors[f"{c}attn.w{x}.weight"]
        if not config.moe_layers[i]:  # a dense layer: Qwen2-MoE's plain MLP names
            for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
                out[f"{h}mlp.{theirs}.weight"] = tensors[f"{c}mlp.{ours}.weight"]
            continue
        out[h + "mlp.gate.weight"] = tensors[c + "mlp.router.weight"]
        for e in range(config.moe.n_experts):
            for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
                out[f"{h}mlp.experts.{e}.{theirs}.weight"] = tensors[f"{c}mlp.{ours}"][e]
        S, D = config.moe.shared_expert_hidden_dim, config.dim
        shared = {n: tensors.get(f"{c}mlp.shared.w_{n}.weight") for n in ("gate", "up", "down")}
        empty = {"gate": torch.zeros(S, D), "up": torch.zeros(S, D), "down": torch.zeros(D, S)}
        for n in ("gate", "up", "down"):
            out[f"{h}mlp.shared_expert.{n}_proj.weight"] = shared[n] if shared[n] is not None else empty[n]
        out[h + "mlp.shared_expert_gate.weight"] = tensors.get(c + "mlp.shared_gate.weight", torch.zeros(1, D))
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def write_tokenizer(directory: Path, tokenizer) -> None:
    """tokenizer.json from the source's `tokenizers` backend, plus its special tokens and chat template."""
    backend = tokenizer.backend
    if not hasattr(backend, "save"):
        raise ValueError("moefy needs a model whose vocabulary loads as a `tokenizers` tokenizer")
    backend.save(str(directory / "tokenizer.json"))
    config = {"bos_token": tokenizer.bos_token or None, "eos_token": tokenizer.eos_token or None,
              "add_bos_token": tokenizer.add_bos, "chat_template": tokenizer.chat_template,
              "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    eos = list(tokenizer.eos_ids)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos[0] if len(eos) == 1 else eos}, indent=1))


def write_checkpoint(directory: Path, config: ModelConfig, tensors: dict[str, torch.Tensor], tokenizer,
                     source: str, extra: dict | None = None) -> None:
    """Write into `directory` (created). `extra` goes to moefy.json (how it was built, its report)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(config, tokenizer, source), indent=1))
    save_file(hf_state(config, tensors), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    write_tokenizer(directory, tokenizer)
    if extra is not None:
        (directory / "moefy.json").write_text(json.dumps(extra, indent=1))
