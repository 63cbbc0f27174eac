"""DeepSeek-V2 GGUF files (llama.cpp's "deepseek2") written from tiny transformers models under llama.cpp's
names and keys, in both of its converter's layouts (one attn_kv_b, or MQA over the latent with attn_k_b /
attn_v_b), load to logits within 1e-4 of transformers; Q8_0 blocks stay packed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ModelFormatError
from engine.loaders.gguf_file import load_gguf
from engine.model import Decoder
from tests.engine.test_arch_deepseek_v2 import YARN, recompute
from tests.engine.test_gguf_loader import write_gguf
from tests.tiny_models import build_hf_model, max_logit_diff

YARN_EQUAL_MSCALES = {**YARN, "mscale": 1.0}  # llama.cpp stores one mscale (yarn_log_multiplier) for both


def gguf_from_hf(path, hf_model, split_kv_b: bool, qtype: str = "F32", extra_kv: dict | None = None,
                 drop: tuple[str, ...] = ()):
    """The tiny model as llama.cpp's converter writes it: no Q/K permutation (deepseek2 rotates pairs, as
    stored); experts stacked; kv_b whole (older files) or split per head into k_b (transposed) and v_b."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    c, a = hf_model.config, "deepseek2"
    H, R, r, n, v = c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim
    state = {name: t.detach().numpy().astype(np.float32) for name, t in hf_model.state_dict().items()}
    kv = {f"{a}.block_count": c.num_hidden_layers, f"{a}.context_length": c.max_position_embeddings,
          f"{a}.embedding_length": c.hidden_size, f"{a}.feed_forward_length": c.intermediate_size,
          f"{a}.attention.head_count": H, f"{a}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
          f"{a}.rope.freq_base": float(c.rope_parameters["rope_theta"]), f"{a}.rope.dimension_count": r,
          f"{a}.attention.kv_lora_rank": R, f"{a}.leading_dense_block_count": c.first_k_dense_replace,
          f"{a}.expert_count": c.n_routed_experts, f"{a}.expert_used_count": c.num_experts_per_tok,
          f"{a}.expert_feed_forward_length": c.moe_intermediate_size, f"{a}.expert_shared_count": c.n_shared_experts,
          f"{a}.expert_weights_scale": float(c.routed_scaling_factor), f"{a}.expert_weights_norm": bool(c.norm_topk_prob),
          f"{a}.expert_gating_func": 1, "tokenizer.ggml.tokens": [f"t{i}" for i in range(c.vocab_size)]}
    if c.q_lora_rank:
        kv[f"{a}.attention.q_lora_rank"] = c.q_lora_rank
    if c.topk_method == "group_limited_greedy":
        kv |= {f"{a}.expert_group_count": c.n_group, f"{a}.expert_group_used_count": c.topk_group}
    if split_kv_b:
        kv |= {f"{a}.attention.head_count_kv": 1, f"{a}.attention.key_length": R + r, f"{a}.attention.value_length": R,
               f"{a}.attention.key_length_mla": n + r, f"{a}.attention.value_length_mla": v}
    else:
        kv |= {f"{a}.attention.head_count_kv": H, f"{a}.attention.key_length": n + r, f"{a}.attention.value_length": v}
    rope = c.rope_parameters
    if rope.get("rope_type") == "yarn":
        kv |= {f"{a}.rope.scaling.type": "yarn", f"{a}.rope.scaling.factor": float(rope["factor"]),
               f"{a}.rope.scaling.original_context_length": rope["original_max_position_embeddings"],
               f"{a}.rope.scaling.yarn_log_multiplier": 0.1 * rope["mscale_all_dim"]}
    tensors = {}

    def add(name, array):
        # rows of whole 32-value blocks only (the converter falls back to float for the others)
        if qtype != "F32" and array.ndim == 2 and array.shape[1] % 32 == 0 and "gate_inp" not in name:
            array = quants.quantize(array, Q[qtype])
        tensors[name] = (array, qtype if array.dtype == np.uint8 else None)

    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    add("output.weight", state["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        hf, b = f"model.layers.{i}.", f"blk.{i}."
        attn = hf + "self_attn."
        add(b + "attn_norm.weight", state[hf + "input_layernorm.weight"])
        add(b + "ffn_norm.weight", state[hf + "post_attention_layernorm.weight"])
        if c.q_lora_rank:
            add(b + "attn_q_a.weight", state[attn + "q_a_proj.weight"])
            add(b + "attn_q_a_norm.weight", state[attn + "q_a_layernorm.weight"])
            add(b + "attn_q_b.weight", state[attn + "q_b_proj.weight"])
        else:
            add(b + "attn_q.weight", state[attn + "q_proj.weight"])
        add(b + "attn_kv_a_mqa.weight", state[attn + "kv_a_proj_with_mqa.weight"])
        add(b + "attn_kv_a_norm.weight", state[attn + "kv_a_layernorm.weight"])
        kv_b = state[attn + "kv_b_proj.weight"]  # [H*(n+v), R]
        if split_kv_b:
            per_head = kv_b.reshape(H, n + v, R)
            add(b + "attn_k_b.weight", np.ascontiguousarray(per_head[:, :n].transpose(0, 2, 1)))  # [H, R, n]
            add(b + "attn_v_b.weight", np.ascontiguousarray(per_head[:, n:]))  # [H, v, R]
        else:
            add(b + "attn_kv_b.weight", kv_b)
        add(b + "attn_output.weight", state[attn + "o_proj.weight"])
        if i < c.first_k_dense_replace:
            for part in ("gate", "up", "down"):
                add(b + f"ffn_{part}.weight", state[hf + f"mlp.{part}_proj.weight"])
            continue
        gate_up, I = state[hf + "mlp.experts.gate_up_proj"], c.moe_intermediate_size  # [E, 2I, D]
        add(b + "ffn_gate_inp.weight", state[hf + "mlp.gate.weight"])
        add(b + "ffn_gate_exps.weight", np.ascontiguousarray(gate_up[:, :I]))
        add(b + "ffn_up_exps.weight", np.ascontiguousarray(gate_up[:, I:]))
        add(b + "ffn_down_exps.weight", state[hf + "mlp.experts.down_proj"])
        for part in ("gate", "up", "down"):
            add(b + f"ffn_{part}_shexp.weight", state[hf + f"mlp.shared_experts.{part}_proj.weight"])
    kv = {key: value for key, value in (kv | (extra_kv or {})).items() if key not in drop}
    write_gguf(path, a, kv, tensors)


@pytest.mark.parametrize("split_kv_b", [True, False], ids=["k_b+v_b", "kv_b"])
@pytest.mark.parametrize("arch,overrides", [("deepseek_v2", {}), ("deepseek_v2-lite", {}),
                                            ("deepseek_v2", {"rope_parameters": YARN_EQUAL_MSCALES})],
                         ids=["v2", "lite", "v2-yarn"])
def test_gguf_round_trip_equals_transformers(arch, overrides, split_kv_b, tmp_path):
    hf_model = build_hf_model(arch, **overrides)
    path = tmp_path / "deepseek2.gguf"
    gguf_from_hf(path, hf_model, split_kv_b)
    config, tensors, _ = load_gguf(path)
    assert config.arch == "deepseek_v2" and config.kv_entry == ((1, 32), (1, 8))
    assert config.moe.n_group == (4 if arch == "deepseek_v2" else 1) and config.moe_layers == (False, True)
    assert max_logit_diff(Decoder.from_tensors(config, tensors), hf_model) <= 1e-4


def test_q8_0_file_stays_packed(tmp_path):
    from engine.quant import QuantLinear, build_model

    hf_model = build_hf_model("deepseek_v2")
    path = tmp_path / "deepseek2-q8.gguf"
    gguf_from_hf(path, hf_model, split_kv_b=False, qtype="Q8_0")
    config, packed, _ = load_gguf(path, keep_packed=True)
    _, floats, _ = load_gguf(path)
    quantized = build_model(config, packed, "cpu", torch.float32, "auto", exact=True)
    reference = build_model(config, floats, "cpu", torch.float32, "none")
    attn = quantized.layers[1].attn
    # q_b reads the 24-wide q latent and wo the 4×12 heads: not whole blocks, so float in the file too
    assert all(isinstance(getattr(attn, name), QuantLinear) for name in ("wq_a", "wkv_a", "wkv_b"))
    prompt = list(range(3, 40))
    torch.testing.assert_close(recompute(quantized, prompt), recompute(reference, prompt), atol=1e-4, rtol=0)


def test_split_kv_b_of_the_wrong_shape_is_a_format_error(tmp_path):
    hf_model = build_hf_model("deepseek_v2-lite")
    path = tmp_path / "bad.gguf"
    # the keys promise wider values than attn_v_b holds
    gguf_from_hf(path, hf_model, split_kv_b=True, extra_kv={"deepseek2.attention.value_length_mla": 14})
    with pytest.raises(ModelFormatError, match="attn_k_b / attn_v_b"):
        load_gguf(path)


@pytest.mark.parametrize("change, words", [
    ({"deepseek2.attention.kv_lora_rank": None}, "kv_lora_rank is missing"),
    ({"deepseek2.attention.key_length_mla": 8}, "leaves no per-head key"),
    ({"deepseek2.expert_group_count": 3}, "groups"),
    ({"deepseek2.expert_gating_func": 2}, "sigmoid"),
])
def test_bad_metadata_is_a_format_error(change, words, tmp_path):
    hf_model = build_hf_model("deepseek_v2")
    path = tmp_path / "bad.gguf"
    dropped = tuple(key for key, value in change.items() if value is None)  # None: the key left out
    gguf_from_hf(path, hf_model, split_kv_b=True, extra_kv={k: v for k, v in change.items() if v is not None},
                 drop=dropped)
    with pytest.raises(ModelFormatError, match=words):
        load_gguf(path)
