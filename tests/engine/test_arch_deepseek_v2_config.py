"""DeepSeek-V2's config.json read into ModelConfig (no weights): the published V2 and V2-Lite configs' latent
and routing, errors for what Glassbox does not run, and group-limited routing on hand-made scores."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config import ModelConfig, MoeConfig
from engine.errors import ModelFormatError
from engine.layers.moe import route
from engine.runtime.kv_pool import kv_bytes_per_token


def test_released_v2_lite_config_sizes():
    """DeepSeek-V2-Lite's published config.json (no weights): 27 layers, latent 512 + RoPE key 64."""
    lite = {"model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
            "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
            "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "n_routed_experts": 64, "n_shared_experts": 2, "moe_intermediate_size": 1408, "num_experts_per_tok": 6,
            "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
            "routed_scaling_factor": 1.0, "norm_topk_prob": False, "scoring_func": "softmax",
            "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                             "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}}
    config = ModelConfig.from_hf(lite)
    assert config.kv_entry == ((1, 512), (1, 64)) and config.head_dim == 64
    assert config.moe_layers == (False,) + (True,) * 26
    assert config.moe.shared_expert_hidden_dim == 2 * 1408 and not config.moe.shared_expert_gated
    assert kv_bytes_per_token(config, torch.bfloat16) == 27 * 576 * 2  # 31,104 B; per-head K/V: 276,480 B
    every_other = ModelConfig.from_hf({**lite, "moe_layer_freq": 2})
    assert every_other.moe_layers[:5] == (False, False, True, False, True)
    # DeepSeek-V2 (236B): q through a 1536 rank, 160 experts in 8 groups of which 3 are kept, weights × 16
    v2 = ModelConfig.from_hf({**lite, "hidden_size": 5120, "num_hidden_layers": 60, "num_attention_heads": 128,
                              "num_key_value_heads": 128, "q_lora_rank": 1536, "n_routed_experts": 160,
                              "moe_intermediate_size": 1536, "topk_method": "group_limited_greedy", "n_group": 8,
                              "topk_group": 3, "routed_scaling_factor": 16.0})
    assert v2.mla.q_lora_rank == 1536 and (v2.moe.n_group, v2.moe.topk_group) == (8, 3)
    assert v2.moe.routed_scaling_factor == 16.0 and kv_bytes_per_token(v2, torch.bfloat16) == 60 * 576 * 2


@pytest.mark.parametrize("change, words", [
    ({"topk_method": "noaux_tc"}, "topk_method"),
    ({"topk_method": "group_limited_greedy", "n_group": 3, "topk_group": 1}, "groups"),
    ({"scoring_func": "sigmoid"}, "scoring"),
    ({"qk_rope_head_dim": 7}, "RoPE part even"),
])
def test_bad_configs_are_format_errors(change, words, hf_checkpoint, tmp_path):
    directory, _ = hf_checkpoint("deepseek_v2-lite")
    raw = json.loads((directory / "config.json").read_text())
    with pytest.raises(ModelFormatError, match=words):
        ModelConfig.from_hf({**raw, **change})


def test_route_group_limited_by_hand():
    """Six experts in 3 groups of 2, the best group kept: the top-2 are the two experts of the group holding
    the single best expert, even when another group's expert beats its partner; weights × the scaling
    factor, after renormalising when norm_topk_prob asks (DeepSeek's own order; transformers 5 ignores it)."""
    probs = torch.tensor([[0.05, 0.10, 0.40, 0.02, 0.30, 0.13]])
    logits = probs.log()
    moe = MoeConfig(6, 2, 8, n_group=3, topk_group=1, routed_scaling_factor=2.0)
    _, ids, weights = route(logits, moe)
    assert ids.tolist() == [[2, 3]]  # group 1 (experts 2, 3) holds 0.40; expert 4 (0.30) is in group 2
    torch.testing.assert_close(weights, torch.tensor([[0.80, 0.04]]))
    plain = MoeConfig(6, 2, 8, routed_scaling_factor=2.0, norm_topk_prob=True)
    _, ids, weights = route(logits, plain)
    assert ids.tolist() == [[2, 4]]
    torch.testing.assert_close(weights, torch.tensor([[0.40 / 0.70 * 2, 0.30 / 0.70 * 2]]))
