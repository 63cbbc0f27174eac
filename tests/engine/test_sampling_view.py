"""Re-deriving a step's distribution from its stored logits equals running the chain directly."""
import torch

from engine.records import SamplingParams, StepRecord
from engine.sampling import run_chain
from engine.instrumentation.distribution import distribution_view


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
    assert top_k.removed == (2, 3, 4) and top_k.active
    assert sum(1 for p in final if p > 0) == 2
    wider = distribution_view(record, SamplingParams(temperature=1.0, top_p=0.99), lambda i: "abcde"[i], top_n=5)
    assert sum(1 for p in wider.stages[-1].probs if p > 0) == 5
