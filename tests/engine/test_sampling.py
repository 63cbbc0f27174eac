"""The sampler chain: each stage on hand-worked distributions, parity with HF's logits processors on
random logits, the stage-by-stage trace, re-deriving from stored top-M logits, and seeded draws."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records import SamplingParams
from engine.sampling import (STAGES, apply_penalties, apply_temperature, draw, filtered_logits, min_p_filter,
                             run_chain, run_chain_sparse, sample, token_counts, top_k_filter, top_p_filter,
                             typical_filter)

# Logits whose softmax is exactly these probabilities make every expected number below easy to check by hand.
P5 = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
L5 = P5.log()
OFF = SamplingParams(temperature=1.0)  # every stage off


def probs(logits):
    return torch.softmax(logits, dim=-1)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- each stage by hand ---------------------------------------------------------------------------------

def test_temperature_two_is_the_square_root_of_the_probabilities():
    # p^(1/2) / sum p^(1/2): sqrt(.4)=.63246, sqrt(.3)=.54772, sqrt(.15)=.38730, sqrt(.1)=.31623, sqrt(.05)=.22361
    close(probs(apply_temperature(L5, 2.0)), [0.30012, 0.25992, 0.18379, 0.15006, 0.10611], atol=1e-5)


def test_temperature_zero_keeps_only_the_argmax_lowest_id_on_ties():
    out = apply_temperature(torch.tensor([0.0, 5.0, 5.0, 1.0]), 0.0)
    assert out.tolist() == [-math.inf, 5.0, -math.inf, -math.inf]


def test_top_k():
    close(probs(top_k_filter(L5, 2)), [4 / 7, 3 / 7, 0, 0, 0])
    assert torch.equal(top_k_filter(L5, 5), L5) and torch.equal(top_k_filter(L5, 50), L5)  # k >= V: no-op
    assert torch.equal(top_k_filter(L5, 0), L5)
    assert top_k_filter(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1).isfinite().tolist() == [True, False, True, False]


def test_top_p():
    # mass before each token: 0, .4, .7, .85, .95 -> kept while < p
    close(probs(top_p_filter(L5, 0.5)), [4 / 7, 3 / 7, 0, 0, 0])
    close(probs(top_p_filter(L5, 0.75)), [8 / 17, 6 / 17, 3 / 17, 0, 0])
    close(probs(top_p_filter(L5, 1e-9)), [1, 0, 0, 0, 0])  # tiny p keeps exactly the top token
    assert torch.equal(top_p_filter(L5, 1.0), L5)


def test_min_p():
    close(probs(min_p_filter(L5, 0.5)), [4 / 7, 3 / 7, 0, 0, 0])  # threshold .5 * .4 = .2
    close(probs(min_p_filter(L5, 0.3)), [8 / 17, 6 / 17, 3 / 17, 0, 0])  # threshold .12
    close(probs(min_p_filter(torch.tensor([1.0, 3.0, 3.0, 0.0]), 1.0)), [0, 0.5, 0.5, 0])  # the max and its ties


def test_typical_p_can_drop_the_most_likely_token():
    # entropy H = 1.3923; |-ln p - H| = .4760, .1883, .5048, .9103, 1.6034 -> typicality order 1, 0, 2, 3, 4
    # with masses .3, .4, .15, ...: the mass before each in that order is 0, .3, .7, .85
    close(probs(typical_filter(L5, 0.25)), [0, 1, 0, 0, 0])
    close(probs(typical_filter(L5, 0.5)), [4 / 7, 3 / 7, 0, 0, 0])
    close(probs(typical_filter(L5, 0.8)), [8 / 17, 6 / 17, 3 / 17, 0, 0])
    assert torch.equal(typical_filter(L5, 1.0), L5)


def test_typical_p_keeps_a_uniform_distribution_whole():
    # every surprisal equals the entropy, so all tokens tie for most typical and share one fate
    assert typical_filter(torch.zeros(6), 0.1).isfinite().all()


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, -3.0])
    counts = token_counts([0, 1, 1, 3], 5)
    assert apply_penalties(logits, counts, repetition=2.0).tolist() == [1.0, -2.0, 0.5, 0.0, -3.0]


def test_presence_and_frequency_penalties_subtract_after_the_repetition_penalty():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, -3.0])
    counts = token_counts([0, 1, 1, 3], 5)  # [1, 2, 0, 1, 0]
    # OpenAI: logit - count * frequency - (count > 0) * presence
    assert apply_penalties(logits, counts, presence=0.5, frequency=0.25).tolist() == [1.25, -2.0, 0.5, -0.75, -3.0]
    assert apply_penalties(logits, counts, 2.0, 0.5, 0.25).tolist() == [0.25, -3.0, 0.5, -0.75, -3.0]


def test_token_counts_ignore_ids_outside_the_vocabulary_and_take_tensors():
    assert token_counts([2, 2, 7, -1, 0], 4).tolist() == [1, 0, 2, 0]
    assert token_counts(torch.tensor([3, 3]), 4).tolist() == [0, 0, 0, 2]
    assert token_counts([], 3).tolist() == [0, 0, 0]


def test_all_stages_off_is_plain_softmax():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0))
    close(run_chain(logits, OFF, history=[1, 2, 3]).probs, probs(logits))


def test_filters_work_on_batches():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    for f, arg in [(top_k_filter, 7), (top_p_filter, 0.8), (min_p_filter, 0.1), (typical_filter, 0.6)]:
        assert torch.equal(f(logits, arg), torch.stack([f(row, arg) for row in logits]))


# --- parity with HF transformers' processors (the reference) -------------------------------------------

hf = pytest.importorskip("transformers.generation.logits_process")
V = 1000


def random_case(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, generator=g) * (1 + seed % 4)
    history = torch.randint(0, V, (64,), generator=g)
    return logits, history


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ours, theirs", [
    (lambda x, h: apply_penalties(x, token_counts(h, V), 1.3), lambda: hf.RepetitionPenaltyLogitsProcessor(1.3)),
    (lambda x, h: apply_penalties(x, token_counts(h, V), 0.7), lambda: hf.RepetitionPenaltyLogitsProcessor(0.7)),
    (lambda x, h: apply_temperature(x, 0.6), lambda: hf.TemperatureLogitsWarper(0.6)),
    (lambda x, h: top_k_filter(x, 40), lambda: hf.TopKLogitsWarper(40)),
    (lambda x, h: top_p_filter(x, 0.9), lambda: hf.TopPLogitsWarper(0.9)),
    (lambda x, h: top_p_filter(x, 0.3), lambda: hf.TopPLogitsWarper(0.3)),
    (lambda x, h: min_p_filter(x, 0.05), lambda: hf.MinPLogitsWarper(0.05)),
    (lambda x, h: typical_filter(x, 0.9), lambda: hf.TypicalLogitsWarper(0.9)),
    (lambda x, h: typical_filter(x, 0.2), lambda: hf.TypicalLogitsWarper(0.2)),
], ids=["rep1.3", "rep0.7", "temp", "top_k", "top_p.9", "top_p.3", "min_p", "typical.9", "typical.2"])
def test_stage_equals_hf(seed, ours, theirs):
    logits, history = random_case(seed)
    close(ours(logits, history), theirs()(history[None], logits[None].clone())[0])


@pytest.mark.parametrize("seed", range(8))
def test_whole_chain_equals_hf_processor_list(seed):
    logits, history = random_case(seed)
    params = SamplingParams(temperature=0.8, top_k=200, top_p=0.95, min_p=0.01, typical_p=0.9, repetition_penalty=1.2)
    chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.2), hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(200),
        hf.TopPLogitsWarper(0.95), hf.MinPLogitsWarper(0.01), hf.TypicalLogitsWarper(0.9)])
    close(run_chain(logits, params, history).logits, chain(history[None], logits[None].clone())[0])


def test_penalties_ignore_ids_beyond_the_lm_head_as_recent_hf_does():
    # transformers 5.23 clamps such ids away but 5.17 raises, so HF itself is not called here.
    logits, history = random_case(0)
    beyond = torch.cat([history, torch.tensor([V, V + 7])])
    params = SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2)
    assert torch.equal(run_chain(logits, params, beyond).logits, run_chain(logits, params, history).logits)


def test_greedy_with_a_repetition_penalty_equals_hf_argmax():
    for seed in range(8):
        logits, history = random_case(seed)
        expected = hf.RepetitionPenaltyLogitsProcessor(1.5)(history[None], logits[None].clone())[0].argmax()
        assert sample(logits, SamplingParams(temperature=0, repetition_penalty=1.5), history=history) == expected


def test_top_p_keeps_exact_ties_where_hf_splits_them():
    """Intentional difference: equal logits share a fate here; HF's sort order keeps just one of them."""
    logits = torch.tensor([1.0, 1.0, 0.0])
    assert top_p_filter(logits, 0.3).isfinite().tolist() == [True, True, False]
    theirs = hf.TopPLogitsWarper(0.3)(torch.zeros(1, 0, dtype=torch.long), logits[None].clone())[0]
    assert theirs.isfinite().sum() == 1 and not theirs[2].isfinite()


# --- greedy and seeded draws ---------------------------------------------------------------------------

def test_greedy_is_argmax_lowest_id_on_ties():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        logits = torch.randn(300, generator=g)
        assert sample(logits, SamplingParams(temperature=0)) == int(logits.argmax())
        assert sample(logits, SamplingParams(top_k=1)) == int(logits.argmax())
    assert sample(torch.tensor([0.0, 5.0, 5.0, 1.0]), SamplingParams(temperature=0)) == 1
    assert sample(torch.tensor([0.0, 5.0, 5.0, 1.0]), SamplingParams(temperature=0, presence_penalty=1.0),
                  history=[1]) == 2


def test_seeded_sampling_is_reproducible():
    params = SamplingParams(temperature=0.9, top_p=0.95, repetition_penalty=1.1)
    logits = torch.randn(20, 500, generator=torch.Generator().manual_seed(3))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample(row, params, g, history=[1, 2, 3]) for row in logits]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_draw_follows_the_distribution_and_never_picks_a_removed_token():
    g = torch.Generator().manual_seed(4)
    p = torch.tensor([0.4, 0.3, 0.0, 0.2, 0.1])
    picks = draw(p.expand(200_000, 5), g)
    close(torch.bincount(picks, minlength=5) / 200_000, p, atol=5e-3)
    assert not (picks == 2).any()


def test_existing_call_signatures_still_work():
    logits, g = torch.randn(50), torch.Generator().manual_seed(0)
    assert 0 <= sample(logits, SamplingParams(), g) < 50
    assert filtered_logits(logits, SamplingParams(top_k=3)).isfinite().sum() == 3


# --- the trace -----------------------------------------------------------------------------------------

def test_trace_shows_each_stage_and_what_it_removed():
    params = SamplingParams(temperature=1.0, top_k=4, top_p=0.7, min_p=0.8)
    result = run_chain(L5, params, trace=True)
    assert [s.name for s in result.stages] == list(STAGES)
    assert [s.active for s in result.stages] == [True, False, False, True, True, True, False]
    removed = {s.name: s.removed.tolist() for s in result.stages}
    assert removed == {"raw": [], "penalties": [], "temperature": [], "top_k": [4], "top_p": [2, 3],
                       "min_p": [1], "typical_p": []}
    close(result.stage("top_k").probs, [8 / 19, 6 / 19, 3 / 19, 2 / 19, 0])  # .4/.95, ...
    close(result.stage("top_p").probs, [4 / 7, 3 / 7, 0, 0, 0])  # mass before token 2 is .737 >= .7
    close(result.stage("min_p").probs, [1, 0, 0, 0, 0])  # (3/7) / (4/7) = .75 < .8
    assert not run_chain(L5, params).stages  # untraced by default


def test_traced_greedy_chain_ends_on_the_greedy_token():
    logits = torch.tensor([0.0, 5.0, 4.9, 1.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    result = run_chain(logits, params, history=[1], trace=True)
    close(result.probs, [0, 0, 1, 0])
    assert sample(logits, params, history=[1]) == 2
    assert result.stage("temperature").removed.tolist() == [0, 1, 3]


@settings(max_examples=150, deadline=None)
@given(logits=st.lists(st.floats(-20, 20), min_size=1, max_size=40),
       history=st.lists(st.integers(0, 45), max_size=10),
       temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]), top_k=st.integers(0, 45),
       top_p=st.floats(0.01, 1.0), min_p=st.floats(0.0, 1.0), typical_p=st.floats(0.01, 1.0),
       repetition=st.floats(0.5, 2.0), presence=st.floats(-2, 2), frequency=st.floats(-2, 2))
def test_trace_invariants(logits, history, temperature, top_k, top_p, min_p, typical_p, repetition, presence,
                          frequency):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                            repetition_penalty=repetition, presence_penalty=presence, frequency_penalty=frequency)
    result = run_chain(torch.tensor(logits), params, history, trace=True)
    kept = set(range(len(logits)))
    for stage in result.stages:
        close(stage.probs.sum(), 1.0, atol=1e-5)
        assert set(stage.removed.tolist()) <= kept  # a stage only removes tokens still in play
        kept -= set(stage.removed.tolist())
        assert set(torch.nonzero(stage.probs > 0).flatten().tolist()) <= kept
    assert kept and kept == set(torch.nonzero(result.logits.isfinite()).flatten().tolist())
    assert torch.equal(result.probs, result.stages[-1].probs)


# --- re-deriving from stored logits --------------------------------------------------------------------

def stored_top_m(seed, m=64):
    logits = torch.randn(2000, generator=torch.Generator().manual_seed(seed)) * 2
    top = torch.topk(logits, m)
    return logits, top.indices, top.values


@pytest.mark.parametrize("seed", range(4))
def test_sparse_chain_equals_the_chain_on_a_vector_that_is_minus_inf_elsewhere(seed):
    full, ids, values = stored_top_m(seed)
    padded = torch.full_like(full, -math.inf).scatter(0, ids, values)
    history = ids[::7].tolist() + [1999, 5]
    params = SamplingParams(temperature=1.3, top_k=50, top_p=0.9, min_p=0.02, typical_p=0.8,
                            repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.1)
    sparse = run_chain_sparse(ids, values, params, history, trace=True)
    dense = run_chain(padded, params, history, trace=True)
    close(sparse.probs, dense.probs[ids])
    for s, d in zip(sparse.stages, dense.stages):
        assert torch.equal(s.removed, d.removed)  # vocabulary ids, not positions in the top M


@pytest.mark.parametrize("seed", range(4))
def test_sparse_chain_is_exact_for_top_k_and_min_p_within_the_top_m(seed):
    full, ids, values = stored_top_m(seed)
    history = ids[[0, 3, 10]].tolist()
    for params in [SamplingParams(temperature=0.8, top_k=20, repetition_penalty=1.3),
                   SamplingParams(temperature=0.7, min_p=0.05, frequency_penalty=0.5)]:
        dense = run_chain(full, params, history)
        assert set(torch.nonzero(dense.probs > 0).flatten().tolist()) <= set(ids.tolist())  # the precondition
        close(run_chain_sparse(ids, values, params, history).probs, dense.probs[ids])


def test_sparse_top_p_cuts_no_later_than_the_full_vocabulary():
    full, ids, values = stored_top_m(0, m=16)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    sparse_kept = set(ids[run_chain_sparse(ids, values, params).logits.isfinite()].tolist())
    dense_kept = set(torch.nonzero(run_chain(full, params).logits.isfinite()).flatten().tolist())
    assert sparse_kept < dense_kept  # the tail's mass is renormalised onto the top M


# --- params ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(repetition_penalty=0.0), dict(repetition_penalty=float("nan")),
                                 dict(presence_penalty=2.5), dict(frequency_penalty=-3.0), dict(typical_p=0.0),
                                 dict(typical_p=1.5)])
def test_params_reject_out_of_range_values(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_params_defaults_leave_the_new_stages_off():
    params = SamplingParams()
    assert not params.penalised and params.typical_p == 1.0 and not params.greedy
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert SamplingParams(presence_penalty=0.1).penalised
