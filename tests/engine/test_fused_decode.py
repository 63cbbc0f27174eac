"""The CPU decode step in one C++ call (engine/runtime/fused_decode.py, engine/quant/csrc/decode.cpp)
against the Python path on the same weights and the same paged cache: the logits of every step, greedy
tokens, batches of sequences of different lengths crossing KV blocks, forks (copy-on-write), Qwen2's q/k/v
biases, and which models and steps it refuses.

The two paths do the same arithmetic in a different float order (RMSNorm's and attention's sums, SiLU's
exponential). Both then round the activations to 8 bits per block for the quantized matmuls, where a
value a hair from a rounding edge may land on the other side, so the logits are compared with a
tolerance, not bit for bit; tokens are compared where the top two logits are not a near tie.
"""
from __future__ import annotations

import pytest
import torch

from engine.engine import Engine
from engine.quant import kernels
from engine.records import GenerationDone, GenerationRequest, InstrumentOptions, SamplingParams
from engine.runtime.fused_decode import why_not
from tests.engine.test_generation import run, stored

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"kernels not built: {kernels.load_error()}")

FULL_LOGITS = InstrumentOptions(stored_logits=-1)


def _engine(hf_checkpoint, arch, quant, **overrides):
    path, _ = hf_checkpoint(arch, **overrides)
    return Engine.load(path, LoadOptionsCPU(quant))


def LoadOptionsCPU(quant):
    from engine.records import LoadOptions

    return LoadOptions(device="cpu", quant=quant, kv_block_size=8)


def _steps(runner, requests):
    """Every step's (full logits, token chosen) by (request index, sequence, step)."""
    out = {}
    for i, (records, _) in enumerate(run(runner, *requests)):
        for seq, steps in records.items():
            for n, record in enumerate(steps):
                out[i, seq, n] = stored(record), record.token_id
    return out


# The tolerance, relative to the largest logit: int8 weights keep these tiny random models' activations
# away from rounding edges (the two paths agree to float noise); with int4 weights the same models sit on
# them, and the Python path alone moves by ~0.1 of a logit between the scalar and AVX-512 kernels
# (measured), so the bound there is looser; a wrong rotation, head mapping, slot or bias moves logits by
# their whole size.
@pytest.mark.parametrize("arch,quant,tolerance", [("llama", "int8", 1e-4), ("qwen2", "int8", 1e-4),
                                                  ("llama", "int4-g32", 0.1)])
def test_every_step_equals_the_python_path(hf_checkpoint, arch, quant, tolerance):
    """Two requests of different lengths in one batch (one crossing KV blocks of 8), one of them forked
    into two samples: each decode step's logits as the Python path computes them from the same cache."""
    engine = _engine(hf_checkpoint, arch, quant)
    runner = engine._runner
    assert runner.fused is not None, why_not(engine.model, runner.pool)
    greedy = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, max_new_tokens=12, ignore_eos=True, seed=3)
    requests = [GenerationRequest(tuple(range(3, 16)), greedy, instrument=FULL_LOGITS),
                GenerationRequest(tuple(range(20, 26)), sampled, n=2, instrument=FULL_LOGITS)]
    fused = _steps(runner, requests)
    saved, runner.fused = runner.fused, None
    try:
        python = _steps(runner, requests)
    finally:
        runner.fused = saved
    assert fused.keys() == python.keys() and len(fused) == 12 * 3
    compared = 0
    for request, seq in {(r, s) for r, s, _ in fused}:
        for n in range(12):  # up to the first token the two paths chose differently (then the inputs differ)
            (ours, token), (theirs, their_token) = fused[request, seq, n], python[request, seq, n]
            scale = theirs.abs().max().item()
            assert (ours - theirs).abs().max().item() <= tolerance * scale, (request, seq, n)
            compared += 1
            if token != their_token:
                top2 = theirs.topk(2).values
                assert request == 1 or (top2[0] - top2[1]).item() < 2 * tolerance * scale, "greedy differs, no near tie"
                break
    assert compared >= 24
    assert engine.kv_blocks_in_use == 0


def test_a_long_context_split_over_threads_equals_the_python_path(hf_checkpoint):
    """Past 512 keys a KV group's attention is split into runs taken by different threads and merged
    (decode.cpp): a 700-token context, int8 weights, as tight as the short-context test."""
    engine = _engine(hf_checkpoint, "llama", "int8", max_position_embeddings=1024)
    runner = engine._runner
    prompt = tuple(3 + (i * 37) % 120 for i in range(700))
    request = GenerationRequest(prompt, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True),
                                instrument=FULL_LOGITS)
    fused = _steps(runner, [request])
    saved, runner.fused = runner.fused, None
    try:
        python = _steps(runner, [request])
    finally:
        runner.fused = saved
    for n in range(1, 4):  # step 0 comes from the prefill
        (ours, token), (theirs, their_token) = fused[0, 0, n], python[0, 0, n]
        assert (ours - theirs).abs().max().item() <= 1e-4 * theirs.abs().max().item(), n
        assert token == their_token


def test_the_default_model_decodes_like_the_python_path(default_gguf):
    """The shipped Q4_1 model, 12 greedy steps after a chat prompt. This model's activations hold outliers
    that set some blocks' 8-bit step, so any change of float summation order moves its logits by ~1 here
    and there: the Python path alone, run on another kernel path (the scalar one instead of the CPU's
    best), moves them by a mean of ~0.3-1.2 per step (measured). The C++ step must stay within twice that
    noise, and choose the same tokens up to a near tie."""
    engine = Engine.load(default_gguf, LoadOptionsCPU("auto"))
    runner = engine._runner
    assert runner.fused is not None, why_not(engine.model, runner.pool)
    others = [isa for isa in kernels.supported_isas() if isa != kernels.isa()]
    if not others:
        pytest.skip("one kernel path only: no second summation order to measure the noise against")
    prompt = engine.chat_prompt_ids([{"role": "user", "content": "Write two sentences about the sea."}])
    request = GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True),
                                instrument=FULL_LOGITS)
    fused = _steps(runner, [request])
    saved, runner.fused, in_use = runner.fused, None, kernels.isa()
    try:
        python = _steps(runner, [request])
        kernels.use_isa(others[-1])  # another path: the scalar one where the CPU has SIMD
        python_other = _steps(runner, [request])
    finally:
        runner.fused = saved
        kernels.use_isa(in_use)

    def mean_gap(a, b) -> float:
        """Mean absolute logit difference per step, up to where the two chose different tokens."""
        gaps = []
        for n in range(12):
            gaps.append((a[0, 0, n][0] - b[0, 0, n][0]).abs().mean().item())
            if a[0, 0, n][1] != b[0, 0, n][1]:
                top2 = b[0, 0, n][0].topk(2).values
                assert (top2[0] - top2[1]).item() < 1.0, f"step {n}: another token without a near tie"
                break
        return sum(gaps) / len(gaps)

    noise = mean_gap(python_other, python)
    assert mean_gap(fused, python) <= 2 * noise + 1e-3, (mean_gap(fused, python), noise)


def test_steps_that_need_the_python_path_take_it(hf_checkpoint):
    """A probe asking for attention maps reads them inside the layers: such a step runs in Python, with the
    same tokens; so do models the C++ step does not cover, float weights and an opt-out."""
    engine = _engine(hf_checkpoint, "llama", "int8")
    runner = engine._runner
    calls = []
    decode = runner.fused.decode
    runner.fused.decode = lambda *a: calls.append(1) or decode(*a)
    params = SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True)
    plain = run(runner, GenerationRequest((5, 6, 7), params))[0][1]
    assert len(calls) == 3  # the first token comes from the prefill
    watched = run(runner, GenerationRequest((5, 6, 7), params, instrument=InstrumentOptions(attention_layers=(0,))))
    assert len(calls) == 3 and watched[0][1].results[0].token_ids == plain.results[0].token_ids
    records = watched[0][0][0]
    assert records[-1].attention  # the maps were recorded

    assert "MoE" in why_not(_engine(hf_checkpoint, "mixtral", "int8").model, runner.pool)
    assert "q/k-norm" in why_not(_engine(hf_checkpoint, "qwen3", "int8").model, runner.pool)
    assert "packed layout" in why_not(_engine(hf_checkpoint, "llama", "none").model, runner.pool)


def test_opting_out_keeps_the_python_path(hf_checkpoint, monkeypatch):
    monkeypatch.setenv("GLASSBOX_FUSED_DECODE", "0")
    assert _engine(hf_checkpoint, "llama", "int8")._runner.fused is None
    with kernels.disabled():  # PyTorch's kernels: nothing for the C++ step to read
        monkeypatch.delenv("GLASSBOX_FUSED_DECODE")
        assert _engine(hf_checkpoint, "llama", "int8")._runner.fused is None
