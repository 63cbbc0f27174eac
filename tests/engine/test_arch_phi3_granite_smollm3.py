"""Phi-3 (LongRoPE, fused projections, partial rotary), Granite (multipliers) and SmolLM3 (NoPE layers) against
transformers: LongRoPE's frequencies and the logits past the original context, greedy tokens through the paged
engine with a shared prefix and a fork, int8 loading, the RoPE view. (Plain parity over 32 + 16 tokens and the loader's
tensor count: test_parity_hf / test_safetensors_loader; GGUF: test_arch_phi3_granite_smollm3_gguf; LongRoPE in
the paged runtime: test_longrope_paging.)"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.config import ModelConfig
from engine.engine import Engine
from engine.errors import ModelFormatError
from engine.kv_cache import ContiguousKVCache
from engine.layers.rope import RopeTable, rope_inv_freq
from engine.loaders.safetensors_dir import load_hf_dir
from engine.model import Decoder
from engine.records import GenerationRequest, InstrumentOptions, LoadOptions, SamplingParams
from tests.engine.test_generation import recompute, run, stored  # noqa: F401 (others import them from here)
from tests.engine.test_parity_hf import run_both

ARCHS = ("phi3", "granite", "smollm3")
FLOAT = LoadOptions(device="cpu", dtype="float32", quant="none", kv_block_size=8)
FULL_LOGITS = InstrumentOptions(stored_logits=-1)
ORIGINAL = 16  # tests/tiny_models.py: the tiny Phi-3's original_max_position_embeddings


# -- LongRoPE ----------------------------------------------------------------------------------------------

def test_longrope_inv_freq_equals_transformers(hf_checkpoint):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    directory, hf_model = hf_checkpoint("phi3")
    config, _, _ = load_hf_dir(directory)
    s = config.rope_scaling
    assert (s.rope_type, s.original_max_position, s.factor, config.rotary_dim) == ("longrope", ORIGINAL, 16.0, 8)
    for seq_len in (None, 5, ORIGINAL, ORIGINAL + 1, 200):
        ref, ref_factor = ROPE_INIT_FUNCTIONS["longrope"](hf_model.config, "cpu", seq_len=seq_len)
        ours, factor = rope_inv_freq(config.rotary_dim, config.rope_theta, s, config.max_seq_len, seq_len)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # the same float32 ops in the same order
        assert factor == pytest.approx(ref_factor, rel=1e-12) == math.sqrt(2)  # sqrt(1 + ln 16 / ln 16)
    short, _ = rope_inv_freq(config.rotary_dim, config.rope_theta, s, config.max_seq_len, ORIGINAL)
    long, _ = rope_inv_freq(config.rotary_dim, config.rope_theta, s, config.max_seq_len, ORIGINAL + 1)
    assert not torch.allclose(short, long)  # the two sets differ, so the checks below can tell them apart


def test_rope_table_switches_per_sequence_like_the_rotary_embedding(hf_checkpoint):
    """transformers' rotary embedding picks the long factors once a forward's largest position passes the original
    context; ours does the same per row, so two sequences in one batch each get their own."""
    directory, hf_model = hf_checkpoint("phi3")
    config, _, _ = load_hf_dir(directory)
    table = RopeTable(config)
    rows = torch.stack([torch.arange(0, 10), torch.arange(30, 40)])  # [2, 10]: short, then past the original
    cos, sin = table.cos_sin(rows)
    rotary = hf_model.model.rotary_emb
    x = torch.zeros(1, 10, config.dim)
    for b in range(2):
        ref_cos, ref_sin = rotary(x, rows[b:b + 1])
        torch.testing.assert_close(cos[b:b + 1], ref_cos, rtol=0, atol=1e-6)
        torch.testing.assert_close(sin[b:b + 1], ref_sin, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prefill,decode", [(8, 16), (40, 4)], ids=["crosses-while-decoding", "long-prefill"])
def test_logits_past_the_original_context_equal_transformers(prefill, decode, hf_checkpoint):
    """8 + 16: the sequence crosses position 16 during decoding, where both models switch to the long factors for
    the new tokens (keys already cached keep their short rotation in a plain forward with a cache; the paged
    engine recomputes them, below); 40: all long."""
    directory, hf_model = hf_checkpoint("phi3")
    assert run_both(directory, hf_model, prefill=prefill, decode=decode) <= 1e-4


def test_the_long_factors_change_the_logits(hf_checkpoint):
    """Not a vacuous comparison: with the short factors in place of the long ones, the logits past 16 differ."""
    directory, _ = hf_checkpoint("phi3")
    config, tensors, _ = load_hf_dir(directory)
    tokens = torch.arange(3, 43)[None]
    logits = {}
    for name, c in (("long", config), ("short", config.replace(rope_scaling=dataclasses.replace(
            config.rope_scaling, long_factor=config.rope_scaling.short_factor)))):
        model = Decoder.from_tensors(c, dict(tensors))
        logits[name] = model(tokens, ContiguousKVCache(c, 40).view(0, 40))
    assert (logits["long"] - logits["short"]).abs().max() > 1e-2


def _phi3_hf(**changes) -> dict:
    hf = {"model_type": "phi3", "vocab_size": 32, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
          "intermediate_size": 96, "max_position_embeddings": 4096, "original_max_position_embeddings": 1024,
          "rope_scaling": {"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}}
    return {**hf, **changes}


def test_transformers_4_phi3_configs():
    """v4 Hub configs: type 'su' (or Phi3Config's 'yarn'), the trained context at the top level, no factor."""
    for kind in ("su", "yarn", "longrope"):
        c = ModelConfig.from_hf(_phi3_hf(rope_scaling={**_phi3_hf()["rope_scaling"], "type": kind}))
        s = c.rope_scaling
        assert (s.rope_type, s.original_max_position, s.factor) == ("longrope", 1024, 4.0)
        _, attention = rope_inv_freq(c.rotary_dim, c.rope_theta, s, c.max_seq_len)
        assert attention == pytest.approx(math.sqrt(1 + math.log(4) / math.log(1024)))
    given = ModelConfig.from_hf(_phi3_hf(rope_scaling={**_phi3_hf()["rope_scaling"], "attention_factor": 1.5}))
    assert rope_inv_freq(given.rotary_dim, 1e4, given.rope_scaling, 4096)[1] == 1.5


@pytest.mark.parametrize("scaling,problem", [({"type": "su", "short_factor": [1.0] * 8}, "equal length"),
                                              ({"type": "su", "short_factor": [1.0] * 4, "long_factor": [1.0] * 4},
                                               "need 8"),
                                              ({"type": "su", "short_factor": [1.0] * 8, "long_factor": [0.0] * 8},
                                               "positive")])
def test_bad_longrope_configs_are_refused_clearly(scaling, problem):
    with pytest.raises(ModelFormatError, match=problem):
        ModelConfig.from_hf(_phi3_hf(rope_scaling=scaling))


def test_granite_and_smollm3_fields(hf_checkpoint):
    granite, _, _ = load_hf_dir(hf_checkpoint("granite")[0])
    assert (granite.embed_scale, granite.residual_multiplier, granite.query_scale, granite.logit_divisor) == \
        (3.0, 0.5, 0.3, 4.0)
    smol, _, _ = load_hf_dir(hf_checkpoint("smollm3")[0])
    assert smol.rope_layers == (True, False)  # interval 2: layer 1 is the NoPE layer
    with pytest.raises(ModelFormatError, match="mlp_bias"):
        ModelConfig.from_hf({**_phi3_hf(), "model_type": "granite", "rope_scaling": None, "mlp_bias": True})


# -- the paged engine --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_paged_engine_greedy_prefix_sharing_and_fork(arch, hf_checkpoint):
    directory, hf_model = hf_checkpoint(arch)
    engine = Engine.load(directory, FLOAT)
    g = torch.Generator().manual_seed(1)
    first = torch.randint(0, 127, (36,), generator=g).tolist()  # past Phi-3's 16 trained positions from the start
    second = first[:32] + [5, 6, 7]  # shares 4 full blocks of 8 with the first
    greedy = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    (_, done_first), = run(engine, GenerationRequest(tuple(first), greedy))
    (_, done_second), = run(engine, GenerationRequest(tuple(second), greedy))
    assert done_second.cached_prompt_tokens == 32
    for prompt, done in ((first, done_first), (second, done_second)):
        # the mask said outright: generate() would otherwise take every token equal to pad_token_id for padding
        ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=12, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(prompt):].tolist()
        assert list(done.results[0].token_ids) == ref
    # a fork: two samples share the prompt's blocks (the last one partial, so it is copied) and diverge
    (recs, done), = run(engine, GenerationRequest(tuple(second), SamplingParams(temperature=1.5, seed=3,
                                                                                max_new_tokens=8),
                                                  n=2, instrument=FULL_LOGITS))
    assert sorted(recs) == [0, 1] and len({r.token_ids for r in done.results}) == 2
    for steps in recs.values():
        tokens = list(second)
        for rec in steps:
            torch.testing.assert_close(stored(rec), recompute(engine.model, tokens), atol=1e-4, rtol=0)
            tokens.append(rec.token_id)
    assert engine.kv_blocks_in_use == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_loading(arch, hf_checkpoint):
    from engine.quant import QuantLinear

    directory, _ = hf_checkpoint(arch)
    reference = Engine.load(directory, FLOAT)
    engine = Engine.load(directory, dataclasses.replace(FLOAT, quant="int8", quant_exact=True))
    assert isinstance(engine.model.layers[0].attn.wqkv, QuantLinear)  # fused after quantization, as for every arch
    prompt = list(range(4, 30))
    ours, ref = recompute(engine.model, prompt), recompute(reference.model, prompt)
    assert (ours - ref).abs().max() < 0.05 * ref.abs().max()  # int8 per-channel error, not a wrong layout


# -- the RoPE view -----------------------------------------------------------------------------------------

def test_rope_view_shows_both_longrope_lists_nope_layers_and_partial_rotary(hf_checkpoint):
    phi3 = Engine.load(hf_checkpoint("phi3")[0], FLOAT)
    table = phi3.model.rope
    for context, active, other in ((ORIGINAL, table.inv_freq, table.long_inv_freq),
                                   (ORIGINAL + 1, table.long_inv_freq, table.inv_freq)):
        view = phi3.rope_view(None, context)
        assert view.scaling == "longrope" and view.trained_context == ORIGINAL and view.factor == 16.0
        assert (view.head_dim, view.head_width) == (8, 16)  # half of each 16-wide head rotates
        # the layer's own table at this length, read back through cos_sin (position 1: the inverse frequency)
        cos, sin = table.cos_sin(torch.arange(context)[None])
        angle = torch.atan2(sin[0, 1, :4], cos[0, 1, :4])
        np.testing.assert_allclose(view.inv_freq, angle.numpy(), rtol=1e-5)
        np.testing.assert_allclose(view.inv_freq, active.numpy(), rtol=1e-6)
        np.testing.assert_allclose(view.other_inv_freq, other.numpy(), rtol=1e-6)
        assert view.attention_scaling == pytest.approx(math.sqrt(2))
    smol = Engine.load(hf_checkpoint("smollm3")[0], FLOAT).rope_view()
    assert smol.nope_layers == (1,) and smol.other_inv_freq == () and smol.head_width == 0


@pytest.mark.parametrize("arch,overrides", [
    ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}, "partial_rotary_factor": 1.0,
              "sliding_window": 8}),  # Phi-3-mini-4k's shape: no LongRoPE, whole heads, every layer windowed
    ("granite", {"tie_word_embeddings": True, "attention_bias": False}),
    ("smollm3", {"attention_bias": True, "no_rope_layers": [0, 1]}),  # an explicit list: layer 0 is NoPE
], ids=["phi3-4k-window", "granite-tied", "smollm3-bias-list"])
def test_variants_match_transformers(arch, overrides, hf_checkpoint):
    directory, hf_model = hf_checkpoint(arch, **overrides)
    config, _, _ = load_hf_dir(directory)
    expected = {"phi3": (config.sliding_windows, config.rope_scaling.rope_type) == ((8, 8), "default"),
                "granite": config.tie_embeddings, "smollm3": config.rope_layers == (False, True) and config.o_bias}
    assert expected[arch]  # the variant is what the comparison below runs
    assert run_both(directory, hf_model) <= 1e-4
