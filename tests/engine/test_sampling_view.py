"""Re-deriving a step's distribution from its stored logits equals the sampler chain's own stages, run on
the full vector the record stands for (-inf outside the stored ids): every stage, penalties with history."""
import pytest
import torch

from engine.instrumentation.distribution import distribution_view
from engine.records import GenerationRequest, InstrumentOptions, LoadOptions, SamplingParams, StepRecord
from engine.sampling import NEG_INF, run_chain

VOCAB, STORED = 200, 60


def stored_record(seed=0, allowed=None, ties=()):
    """A step that stored STORED of VOCAB logits (ids scattered over the vocabulary); `ties` are pairs of
    stored positions set to the same logit."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(VOCAB, generator=g)[:STORED]
    logits = torch.randn(STORED, generator=g) * 2.5
    for a, b in ties:
        logits[b] = logits[a]
    return StepRecord(0, 7, token_id=int(ids[int(logits.argmax())]), text="x", prob=0.5,
                      logit_ids=tuple(ids.tolist()), logit_values=tuple(logits.tolist()),
                      logit_allowed=tuple(allowed) if allowed is not None else ())


def full_vector(record):
    full = torch.full((VOCAB,), NEG_INF)
    full[torch.tensor(record.logit_ids)] = torch.tensor(record.logit_values)
    return full


def kth_tie(record, k):
    """Stored positions of the k-th and (k+1)-th most likely tokens, to be tied."""
    order = torch.argsort(torch.tensor(record.logit_values), descending=True)
    return int(order[k - 1]), int(order[k])


HISTORY_SEED = 3
CASES = {
    "penalties": SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2),
    "temperature": SamplingParams(temperature=0.6),
    "top_k": SamplingParams(temperature=1.0, top_k=5),
    "top_p": SamplingParams(temperature=0.9, top_p=0.8),
    "min_p": SamplingParams(temperature=1.0, min_p=0.05),
    "typical_p": SamplingParams(temperature=1.3, typical_p=0.7),
    "everything": SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, typical_p=0.95,
                                 repetition_penalty=1.2),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("constrained", [False, True])
def test_every_stage_equals_the_chain_stage(case, constrained):
    params = CASES[case]
    base = stored_record()
    ties = (kth_tie(base, 5),) if case == "top_k" else ()  # the 5th and 6th tie: top-k 5 keeps 6
    allowed = [i % 3 != 1 for i in range(STORED)] if constrained else None
    record = stored_record(allowed=allowed, ties=ties)
    history = list(record.logit_ids[:12:2]) * 2 + list(record.logit_ids[30:33]) + [VOCAB + 5]  # one id outside
    view = distribution_view(record, params, str, top_n=12, history=history)
    full_allowed = None
    if constrained:
        full_allowed = torch.zeros(VOCAB, dtype=torch.bool)
        full_allowed[torch.tensor(record.logit_ids)] = torch.tensor(allowed)
    chain = run_chain(full_vector(record), params, history, trace=True, allowed=full_allowed)
    names = [s.name for s in view.stages]
    assert names == [s.name for s in chain.stages]
    assert names[:2] == (["raw", "constraint"] if constrained else ["raw", "penalties"])
    shown = torch.tensor(view.token_ids)
    before = STORED
    for stage, traced in zip(view.stages, chain.stages):
        assert stage.active == traced.active, stage.name
        assert torch.allclose(torch.tensor(stage.probs), traced.probs[shown], atol=1e-6), stage.name
        assert stage.removed == tuple(sorted(set(traced.removed.tolist()) & set(view.token_ids)))
        # counts over the whole stored distribution, not the shown tokens
        assert stage.before == before and stage.num_removed == len(traced.removed), stage.name
        assert stage.kept == int((traced.probs > 0).sum()), stage.name
        if stage.active and stage.name in ("constraint", "top_k", "top_p", "min_p", "typical_p"):
            assert f"{stage.kept} of {stage.before}" in stage.reason, stage.reason
        before = stage.kept
        entropy = float(torch.special.entr(traced.probs).sum())
        assert stage.entropy == pytest.approx(entropy, abs=1e-5)
    assert view.entropy_before == pytest.approx(view.stages[0].entropy) and view.entropy == view.stages[-1].entropy
    assert view.stage(case) is None or view.stage(case).active


def test_top_k_ties_are_said():
    base = stored_record()
    record = stored_record(ties=(kth_tie(base, 5),))
    top_k = distribution_view(record, CASES["top_k"], str, top_n=12).stage("top_k")
    assert top_k.kept == 6 and top_k.reason.startswith("top-k 5 kept 6 of 60: ranks 5 and 6 tie at ")


def test_top_p_line_sits_on_the_curve_entering_top_p():
    """With top-p 0.8 the pre-top-p curve reaches 0.8 exactly where the chain cut; the final one cannot say it."""
    record = stored_record(seed=1)
    params = SamplingParams(temperature=1.4, top_k=30, top_p=0.8)
    view = distribution_view(record, params, str, top_n=12)
    chain = run_chain(full_vector(record), params, trace=True)
    entering = torch.sort(chain.stage("top_k").probs, descending=True).values
    entering = entering[entering > 0]
    curve = torch.tensor(view.top_p_curve)
    assert torch.allclose(curve, torch.cumsum(entering, 0), atol=1e-6) and len(curve) == 30
    cut = int((chain.stage("top_p").probs > 0).sum())
    assert view.top_p_kept == cut > 2
    assert curve[cut - 2] < 0.8 <= curve[cut - 1]  # the cut is the token that crosses p
    reason = view.stage("top_p").reason
    assert reason.startswith(f"top-p 0.8: the first {cut} tokens reach {float(curve[cut - 1]):.2f}; kept {cut} of 30")


def test_penalties_need_the_history_and_say_what_they_saw():
    record = stored_record()
    params = CASES["penalties"]
    without = distribution_view(record, params, str, top_n=12)
    assert not without.stage("penalties").active and "no token history" in without.stage("penalties").reason
    shown = distribution_view(record, params, str, top_n=12).token_ids
    history = list(shown[:4]) + [shown[0]]
    penalties = distribution_view(record, params, str, top_n=12, history=history).stage("penalties")
    assert penalties.active and penalties.kept == penalties.before == STORED
    assert penalties.reason == ("penalties ×1.3, presence −0.4, frequency −0.2 per use: 4 shown tokens seen before "
                                "(4 stored)")
    off = distribution_view(record, SamplingParams(), str, top_n=12, history=history).stage("penalties")
    assert not off.active and off.reason == "penalties: off"


def test_min_p_and_temperature_reasons_state_their_numbers():
    record = stored_record()
    view = distribution_view(record, SamplingParams(temperature=0.5, min_p=0.05), str, top_n=12)
    top = max(view.stage("temperature").probs)
    assert view.stage("min_p").reason.startswith(f"min-p 0.05: removed below 0.05 × {top:.3f} = ")
    assert view.stage("temperature").reason.startswith("temperature 0.5 sharpens: entropy ")
    greedy = distribution_view(record, SamplingParams(temperature=0.0), str, top_n=12)
    assert greedy.stage("temperature").kept == 1 and greedy.entropy == 0.0


def test_view_matches_the_chain_and_marks_removed_tokens():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]))
    record = StepRecord(0, 3, token_id=0, text="a", prob=0.4, logit_ids=tuple(range(5)),
                        logit_values=tuple(logits.tolist()))
    params = SamplingParams(temperature=1.0, top_k=2)
    view = distribution_view(record, params, lambda i: "abcde"[i], top_n=5)
    assert view.token_ids == (0, 1, 2, 3, 4) and view.token_texts == tuple("abcde")
    final = view.stages[-1].probs
    expected = run_chain(logits, params).probs
    assert torch.allclose(torch.tensor(final), expected, atol=1e-6)
    top_k = next(s for s in view.stages if s.name == "top_k")
    assert top_k.removed == (2, 3, 4) and top_k.active and top_k.reason == "top-k 2 kept 2 of 5"
    assert sum(1 for p in final if p > 0) == 2
    wider = distribution_view(record, SamplingParams(temperature=1.0, top_p=0.99), lambda i: "abcde"[i], top_n=5)
    assert sum(1 for p in wider.stages[-1].probs if p > 0) == 5


def test_engine_distribution_penalises_the_history_the_runner_did(hf_checkpoint):
    """Greedy with a strong repetition penalty: the engine's own choice at each step is the argmax of the
    view's penalised stage when given prompt + the tokens before the step, as the runner penalised."""
    from engine.engine import Engine

    directory, _ = hf_checkpoint("llama")
    engine = Engine.load(str(directory), LoadOptions(device="cpu", dtype="float32"))
    params = SamplingParams(temperature=0.0, repetition_penalty=3.0, max_new_tokens=8)
    prompt = (5, 6, 7, 5, 6, 7)
    request = GenerationRequest(prompt, params, instrument=InstrumentOptions(stored_logits=-1))
    records = [r for r in engine.stream(request) if isinstance(r, StepRecord)]
    assert len(records) == 8
    mattered = 0
    for k, record in enumerate(records):
        history = list(prompt) + [r.token_id for r in records[:k]]
        view = engine.distribution(record, params, top_n=12, history=history)
        penalties = view.stage("penalties")
        assert penalties.active and "seen before" in penalties.reason
        assert view.token_ids[max(range(12), key=penalties.probs.__getitem__)] == record.token_id
        assert view.stages[-1].probs[view.token_ids.index(record.token_id)] == 1.0
        mattered += view.token_ids[0] != record.token_id  # the model's own favourite was penalised away
    assert mattered > 0
