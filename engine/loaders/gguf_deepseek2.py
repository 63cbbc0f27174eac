"""DeepSeek-V2 GGUF files (general.architecture "deepseek2") as llama.cpp's converter writes them: what their
keys mean beyond the shared ones (gguf_config.py reads those), and the latent attention's kv_b in either of
the converter's two layouts, put back into the canonical `attn.wkv_b` (docs/weights.md).

- MLA: `attention.q_lora_rank` (absent or 0: V2-Lite's direct attn_q), `attention.kv_lora_rank` R,
  `rope.dimension_count` r (the RoPE part). Files from llama.cpp's MLA support on (2025) describe the model as
  MQA over the latent: head_count_kv 1, key_length R + r, value_length R, the per-head widths in
  `attention.key_length_mla` (n + r) and `attention.value_length_mla` (v), and kv_b split into attn_k_b
  [H, R, n] (each head's key part, transposed) and attn_v_b [H, v, R]. Older files: head_count_kv H,
  key_length n + r, value_length v, and one attn_kv_b [H*(n+v), R].
- RoPE rotates adjacent pairs (llama.cpp's "norm" mode) on the weights as HF stores them: nothing is permuted.
- MoE: `leading_dense_block_count`, shared experts as `ffn_*_shexp` (no gate), `expert_weights_scale`,
  `expert_weights_norm`, `expert_gating_func` (softmax only), and `expert_group_count` /
  `expert_group_used_count` when written (without them llama.cpp routes plain top-k, and so does this).
- YaRN: `rope.scaling.yarn_log_multiplier` is 0.1 × mscale_all_dim; llama.cpp takes mscale to be the same
  (true of the released models), which makes YaRN's cos/sin factor 1 and the softmax scale × mscale².
"""
from __future__ import annotations

import dataclasses

import torch

from engine.config import MlaConfig, ModelConfig, RopeScaling

SOFTMAX_GATING = 1  # gguf.ExpertGatingFuncType.SOFTMAX


def deepseek2_fields(k, config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> dict:
    """ModelConfig.replace() arguments for a deepseek2 file; `config` is what the shared keys gave (its head_dim
    is already the RoPE part), `k` gguf_config's typed key reader, `shapes` the file's tensor shapes."""
    r, H = config.head_dim, config.n_heads
    if k.raw("attention.key_length_mla") is not None:  # MQA over the latent
        n, v = k.int("attention.key_length_mla") - r, k.int("attention.value_length_mla")
    else:
        n, v = k.int("attention.key_length") - r, k.int("attention.value_length")
    if n <= 0:
        k.fail("attention.key_length", f"leaves no per-head key beside the {r}-wide RoPE part")
    mla = MlaConfig(k.int("attention.kv_lora_rank"), n, r, v, k.int("attention.q_lora_rank", 0, lo=0) or None,
                    a_bias="blk.0.attn_kv_a_mqa.bias" in shapes)
    fields = dict(mla=mla, n_kv_heads=H, rope_scaling=_rope_scaling(k, config.rope_scaling))
    if config.moe is not None:
        if k.int("expert_gating_func", SOFTMAX_GATING) != SOFTMAX_GATING:
            k.fail("expert_gating_func", "is not softmax (DeepSeek-V3's sigmoid gating is not supported)")
        groups = k.int("expert_group_count", 1)
        fields["moe"] = dataclasses.replace(
            config.moe, norm_topk_prob=bool(k.raw("expert_weights_norm")), shared_expert_gated=False,
            routed_scaling_factor=k.float("expert_weights_scale", 1.0),
            n_group=groups, topk_group=k.int("expert_group_used_count", groups, hi=groups) if groups > 1 else 1)
        first_dense = k.int("leading_dense_block_count", 0, lo=0, hi=config.n_layers)
        if any(config.moe_layers[:first_dense]):
            k.fail("leading_dense_block_count", f"= {first_dense}, but an earlier layer has experts")
    return fields


def _rope_scaling(k, shared: RopeScaling) -> RopeScaling:
    """The shared reading plus DeepSeek's mscale_all_dim (stored as 0.1 × it)."""
    log_multiplier = k.float("rope.scaling.yarn_log_multiplier", None)
    if shared.rope_type != "yarn" or log_multiplier is None:
        return shared
    mscale = log_multiplier / 0.1
    return dataclasses.replace(shared, mscale=mscale, mscale_all_dim=mscale)


def merge_kv_b(tensors: dict, config: ModelConfig, path) -> None:
    """attn_k_b [H, R, n] and attn_v_b [H, v, R] (renamed attn.k_b / attn.v_b) -> attn.wkv_b [H*(n+v), R], in
    place: per head its n key rows (k_b transposed back) then its v value rows, as HF's kv_b_proj. A file
    with attn_kv_b as well keeps that one."""
    from engine.errors import ModelFormatError

    if config.mla is None:
        return
    H, R = config.n_heads, config.mla.kv_lora_rank
    n, v = config.mla.qk_nope_head_dim, config.mla.v_head_dim
    for i in range(config.n_layers):
        p = f"layers.{i}.attn."
        k_b, v_b = tensors.pop(p + "k_b", None), tensors.pop(p + "v_b", None)
        if k_b is None and v_b is None or p + "wkv_b.weight" in tensors:
            continue
        if k_b is None or v_b is None or tuple(k_b.shape) != (H, R, n) or tuple(v_b.shape) != (H, v, R):
            raise ModelFormatError(path, f"blk.{i}.attn_k_b / attn_v_b have shapes "
                                         f"{None if k_b is None else tuple(k_b.shape)} / "
                                         f"{None if v_b is None else tuple(v_b.shape)}; the config implies "
                                         f"{(H, R, n)} / {(H, v, R)}")
        tensors[p + "wkv_b.weight"] = torch.cat((k_b.transpose(1, 2), v_b), dim=1).reshape(H * (n + v), R)
