"""The headless Backend on its own: requests that arrive together share every decode step (continuous
batching: one forward pass per step for all of them), each listener hears only its own request, and a
cancel from another thread ends a request with its blocks freed."""
from __future__ import annotations

import threading

from engine.records import GenerationRequest, RequestDone, SamplingParams, StepRecord
from tests.serve.conftest import wait_idle


def test_requests_submitted_together_share_decode_steps(engine_loop):
    gate = threading.Event()
    engine_loop.run(lambda engine: gate.wait(30))  # hold the engine's thread while four requests queue up
    forwards_before = engine_loop.run(lambda e: e.counters[1])
    heard: dict[int, list] = {}
    ended = threading.Semaphore(0)

    def listener_for(i):
        def listen(record):
            heard.setdefault(i, []).append(record)
            if isinstance(record, RequestDone):
                ended.release()
        return listen
    params = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True)
    ids = [engine_loop.submit(GenerationRequest((65 + i, 66, 67), params), listener_for(i)) for i in range(4)]
    gate.set()
    for _ in range(4):
        assert ended.acquire(timeout=60)
    rids = [f.result() for f in ids]
    for i, rid in enumerate(rids):
        steps = [r for r in heard[i] if isinstance(r, StepRecord)]
        assert len(steps) == 10 and {r.request_id for r in heard[i]} == {rid}
    # one prefill forward per prompt, then 9 decode steps each serving all four sequences in one forward
    assert engine_loop.run(lambda e: e.counters[1]).result() - forwards_before.result() == 4 + 9
    assert wait_idle(engine_loop) == 0


def test_cancel_from_another_thread_frees_the_blocks(engine_loop):
    ended = threading.Event()
    done = []
    params = SamplingParams(temperature=0, max_new_tokens=1500, ignore_eos=True)

    def listen(record):
        if isinstance(record, RequestDone):
            done.append(record)
            ended.set()
    rid = engine_loop.submit(GenerationRequest((65, 66, 67), params), listen).result()
    engine_loop.cancel(rid)
    assert ended.wait(60)
    assert done[0].results[0].finish_reason == "cancelled"
    assert wait_idle(engine_loop) == 0
