"""RoPE scaling against transformers: inverse frequencies, attention scaling, and the logits of a
tiny llama run past its trained context under each rule."""
import pytest
import torch

from engine.config import RopeScaling
from engine.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq
from tests.engine.test_parity_hf import run_both

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-mscale": {"rope_type": "yarn", "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                    "beta_fast": 16, "beta_slow": 2, "original_max_position_embeddings": 16},
    "yarn-attn-factor": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3, "truncate": False},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}
HEAD_DIM, THETA, MAX_POS = 16, 10000.0, 16


def hf_config(params: dict):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=MAX_POS,
                       rope_parameters={"rope_theta": THETA, **params})


@pytest.mark.parametrize("name", sorted(SCALINGS))
@pytest.mark.parametrize("seq_len", [None, 40])
def test_inv_freq_and_attention_scaling_match(name, seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = SCALINGS[name]
    config = hf_config(params)
    ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)
    ours_inv, ours_scale = rope_inv_freq(HEAD_DIM, THETA, RopeScaling.from_hf(params), MAX_POS, seq_len)
    torch.testing.assert_close(ours_inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert ours_scale == pytest.approx(ref_scale, rel=1e-9)


def test_cos_sin_and_rotation_match_llama_rotary_embedding():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    params = SCALINGS["yarn-mscale"]
    rotary = LlamaRotaryEmbedding(hf_config(params))
    positions = torch.arange(50).unsqueeze(0)
    x = torch.randn(1, 4, 50, HEAD_DIM)
    ref_cos, ref_sin = rotary(x, positions)
    inv, scale = rope_inv_freq(HEAD_DIM, THETA, RopeScaling.from_hf(params), MAX_POS)
    cos, sin = rope_cos_sin(positions, inv, scale)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)
    ref_q, _ = apply_rotary_pos_emb(x, x, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rope(x, cos.unsqueeze(1), sin.unsqueeze(1)), ref_q)


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_logits_match_past_the_trained_context(name, hf_checkpoint):
    """Prefill 32 and decode 16 with a trained context of 16, so every rule is really in play
    (dynamic NTK re-derives its base at each longer step)."""
    directory, hf_model = hf_checkpoint("llama", max_position_embeddings=MAX_POS,
                                        rope_parameters={"rope_theta": THETA, **SCALINGS[name]})
    assert run_both(directory, hf_model) <= 1e-4


def test_override_parses_and_stretches_context():
    from engine.config import ModelConfig
    from engine.engine import with_rope_override

    base = ModelConfig(arch="llama", vocab_size=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4,
                       hidden_dim=8, max_seq_len=2048)
    stretched = with_rope_override(base, "yarn:4")
    assert stretched.max_seq_len == 8192
    assert stretched.rope_scaling.rope_type == "yarn" and stretched.rope_scaling.original_max_position == 2048
    with pytest.raises(ValueError, match="unknown RoPE scaling"):
        with_rope_override(base, "bogus:2")
