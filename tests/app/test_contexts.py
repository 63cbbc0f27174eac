"""RequestContexts: the context a selected token was produced from is its prompt and the tokens before it."""
from __future__ import annotations

from app.contexts import RequestContexts
from engine.records import PromptRecord, StepRecord


def step(request: int, index: int, token: int, seq: int = 0) -> StepRecord:
    return StepRecord(request_id=request, index=index, token_id=token, text=f"t{token}", prob=1.0, seq_index=seq)


def test_before_is_the_prompt_then_the_tokens_generated_before_the_step():
    contexts = RequestContexts(kept=2)
    contexts.start(PromptRecord(1, (5, 6, 7), ("a", "b", "c")))
    contexts.add([step(1, 0, 10), step(1, 0, 99, seq=1), step(1, 1, 11)])  # another sample's token is not the reply
    contexts.add([step(1, 2, 12)])
    assert contexts.before(step(1, 0, 10)) == ((5, 6, 7), ("a", "b", "c"))
    assert contexts.before(step(1, 2, 12)) == ((5, 6, 7, 10, 11), ("a", "b", "c", "t10", "t11"))
    assert contexts.latest() == ((5, 6, 7, 10, 11, 12), ("a", "b", "c", "t10", "t11", "t12"))
    assert contexts.before(step(1, 0, 99, seq=1)) is None


def test_only_the_newest_requests_are_kept_and_a_new_model_forgets_them():
    contexts = RequestContexts(kept=2)
    for request in (1, 2, 3):
        contexts.start(PromptRecord(request, (request,), ("x",)))
    assert contexts.before(step(1, 0, 0)) is None and contexts.before(step(3, 0, 0)) == ((3,), ("x",))
    contexts.reset()
    assert contexts.before(step(3, 0, 0)) is None and contexts.latest() == ((), ())
