"""LongRoPE in the paged engine (tiny Phi-3 trained on 16 positions): a prompt past the original context is
rotated long from its first token whatever the prefill chunks and the prefix cache hold; a sequence that decodes
past it is recomputed long at that step (as transformers' generate does); the static (CUDA-graph) step, forks and
speculative decoding agree. Granite and SmolLM3 take the static path too."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.engine import Engine
from engine.records import GenerationRequest, SamplingParams
from tests.engine.test_arch_phi3_granite_smollm3 import ARCHS, FLOAT, FULL_LOGITS, recompute, run, stored


@pytest.mark.parametrize("arch", ARCHS)
def test_static_decode_step_equals_the_paged_view(arch, hf_checkpoint):
    """The fixed-shape step CUDA graphs capture (engine/runtime/static_decode.py) picks LongRoPE's list on the
    device from its refilled position buffer: a 10-token prompt decoded past 16 positions switches inside it
    exactly as the ordinary paged view does; NoPE layers and the Granite multipliers take the same path."""
    from engine.runtime.runner import Runner
    from engine.runtime.static_decode import StaticDecoder, graphable

    directory, _ = hf_checkpoint(arch)
    loaded = Engine.load(directory, FLOAT)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert graphable(model, None)
    prompt = list(range(20, 30))
    plain = Runner(model, tokenizer, num_blocks=32, block_size=8)
    static = Runner(model, tokenizer, num_blocks=32, block_size=8)
    static.static = StaticDecoder(model, static.pool, use_graphs=False, smallest_bucket=16)
    steps, real = [], static.static.decode
    static.static.decode = lambda *a: steps.append(a[1]) or real(*a)  # the decoded token's position
    logits = {}
    for name, runner in (("plain", plain), ("static", static)):
        forward, logits[name] = runner._forward, []
        runner._forward = (lambda tables, chunks, probe, f=forward, s=logits[name]:
                           s.append(f(tables, chunks, probe)) or s[-1])
        run(runner, GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=16,
                                                                     ignore_eos=True)))
    assert len(logits["plain"]) == len(logits["static"]) == 16 and steps == list(range(10, 25))  # crosses 16
    for a, b in zip(logits["plain"], logits["static"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_longrope_prompts_are_rotated_alike_whatever_the_chunks_and_the_prefix_cache(hf_checkpoint):
    """A prompt past the original context is rotated with the long factors from its first token, as one forward
    over it is (and transformers' generate), even when prefilled in chunks that each lie within 16 positions;
    its blocks never match blocks of the same tokens computed with the short factors, nor the other way round."""
    directory, hf_model = hf_checkpoint("phi3")
    engine = Engine.load(directory, FLOAT)
    engine._runner.prefill_chunk = 8  # every chunk of the long prompt, alone, would fit in 16 positions
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(1, 127, (36,), generator=g).tolist()
    greedy = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    # 12 + 2 decoded tokens stay within 16 positions: prompt[:8] is cached with the short factors
    (_, short), = run(engine, GenerationRequest(tuple(prompt[:12]), dataclasses.replace(greedy, max_new_tokens=3)))
    (recs, long), = run(engine, GenerationRequest(tuple(prompt), greedy, instrument=FULL_LOGITS))
    assert long.cached_prompt_tokens == 0  # the short-factor block of prompt[:8] is not reused
    torch.testing.assert_close(stored(recs[0][0]), recompute(engine.model, prompt), atol=1e-4, rtol=0)
    ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 36, dtype=torch.long),
                            max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 36:].tolist()
    assert list(long.results[0].token_ids) == ref
    (_, again), = run(engine, GenerationRequest(tuple(prompt[:32] + [9, 9]), greedy))
    assert again.cached_prompt_tokens == 32  # long-factor blocks serve long prompts
    (recs, short_again), = run(engine, GenerationRequest(tuple(prompt[:14]), greedy, instrument=FULL_LOGITS))
    assert short_again.cached_prompt_tokens == 8  # and short-factor blocks short ones
    torch.testing.assert_close(stored(recs[0][0]), recompute(engine.model, prompt[:14]), atol=1e-4, rtol=0)


def test_a_sequence_crossing_the_original_context_is_recomputed_long(hf_checkpoint):
    """A 10-token prompt decoded past 16 positions: at the crossing the engine recomputes the sequence's keys
    with the long factors, as transformers' generate() does, so greedy tokens equal generate()'s and every
    sample of a fork equals one plain forward over its tokens, before and after the switch."""
    directory, hf_model = hf_checkpoint("phi3")
    engine = Engine.load(directory, FLOAT)
    prompt = list(range(40, 50))
    (_, done), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=14,
                                                                             ignore_eos=True)))
    ref = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 10, dtype=torch.long),
                            max_new_tokens=14, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 10:].tolist()
    assert list(done.results[0].token_ids) == ref
    recomputes, real = [], engine._runner.run_tokens
    engine._runner.run_tokens = lambda table, tokens: recomputes.append(len(tokens)) or real(table, tokens)
    (recs, forked), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=1.5, seed=5,
                                                                                  max_new_tokens=12),
                                                    n=2, instrument=FULL_LOGITS))
    assert sorted(recs) == [0, 1] and all(len(steps) == 12 for steps in recs.values())
    for steps in recs.values():
        tokens = list(prompt)
        for rec in steps:  # positions 10..21: the switch happens at 16
            torch.testing.assert_close(stored(rec), recompute(engine.model, tokens), atol=1e-4, rtol=0)
            tokens.append(rec.token_id)
    # once per sample, and only what the cache did not hold long already (the first request's long blocks
    # of the shared prompt, prompt[:8])
    assert recomputes == [8, 8]
    assert engine.kv_blocks_in_use == 0


@pytest.mark.parametrize("drafter", ["ngram", "self-layers:1"])
def test_speculative_greedy_equals_plain_greedy_across_the_switch(drafter, hf_checkpoint):
    """Verify windows never straddle the original context and the crossing step recomputes first, so
    speculative greedy decoding gives plain greedy's tokens on a sequence that passes 16 positions."""
    from engine.records import SpeculativeOptions

    directory, _ = hf_checkpoint("phi3")
    engine = Engine.load(directory, FLOAT)
    prompt = [7, 8, 9, 7, 8, 9, 7, 8, 9, 7]  # repetitive, so the n-gram drafter has something to propose
    greedy = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    (_, plain), = run(engine, GenerationRequest(tuple(prompt), greedy))
    engine._runner.drop_prefix_cache()
    (_, spec), = run(engine, GenerationRequest(tuple(prompt), greedy, speculative=SpeculativeOptions(drafter, k=4)))
    assert spec.error is None and spec.results[0].token_ids == plain.results[0].token_ids
