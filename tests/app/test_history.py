"""The conversation's step records stay within a byte budget (app/history.py): a long stream keeps only
its newest records in full, the oldest keep their token, and a dropped step says so when clicked."""
from __future__ import annotations

import random
import tracemalloc
from array import array

from app.chat_controller import ChatController
from app.history import HISTORY_BUDGET, HistoryBudget, lighten, record_bytes
from engine.records import MemorySnapshot, RoutingRecord, StepRecord, TokenProb
from widgets.chat import ChatPanel


def step(i: int, routed: bool = False) -> StepRecord:
    """A record as the window's default instrumentation makes it: top-20 before/after, 512 logits, memory."""
    rng = random.Random(i)
    top = tuple(TokenProb(j, f"tok{j}", rng.random()) for j in range(20))
    routing = tuple(RoutingRecord(layer, (1, 2), (0.6, 0.4), (0.1, 0.6, 0.3, 0.0)) for layer in range(4)) \
        if routed else ()
    return StepRecord(7, i, token_id=i % 500, text=f" w{i}", prob=0.5, entropy=1.5, top_before=top, top_after=top,
                      logit_ids=array("i", range(512)), logit_values=array("f", [rng.random()] * 512),
                      routing=routing, memory=MemorySnapshot(block_refs=(1,) * 2048, kv_blocks_total=2048))


def test_a_long_stream_stays_under_the_budget_and_the_newest_keep_their_details():
    steps: list[StepRecord] = []
    history = HistoryBudget()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        n = 0
        while n < 9_000:  # ~10 KB each in full: 90 MB of records, over the 64 MB budget
            steps.extend(step(i) for i in range(n, n + 8))  # the hub hands records over in batches
            history.added(steps)
            n += 8
            assert history.total <= HISTORY_BUDGET
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(steps) == 9_000 and [s.index for s in steps] == list(range(9_000))  # every token is still there
    assert held < HISTORY_BUDGET * 1.25, f"the estimate is far below what the records hold: {held >> 20} MB"
    assert history.total == sum(record_bytes(s) for s in steps)
    newest = steps[-2_000:]
    assert all(len(s.logit_ids) == 512 and len(s.top_before) == 20 for s in newest)
    oldest = steps[:history.light]
    assert history.light > 1_000 and all(not s.logit_ids and not s.top_before and not s.routing for s in oldest)
    assert all(s.text == f" w{s.index}" and s.prob == 0.5 for s in oldest)  # the transcript's part stays
    assert steps[-1].memory is not None and all(s.memory is None for s in steps[:-1])  # the newest snapshot only


def test_routing_goes_with_the_rest_and_a_branch_or_a_clear_recounts():
    steps = [step(i, routed=True) for i in range(50)]
    history = HistoryBudget(budget=sum(record_bytes(lighten(s)) for s in steps) + 10 * record_bytes(steps[0]))
    history.added(steps)
    assert 20 < history.light < 50 and not steps[0].routing and steps[-1].routing
    del steps[45:]
    history.truncated(steps)
    assert history.total == sum(record_bytes(s) for s in steps)
    steps = history.reset()
    assert steps == [] and history.total == 0 and history.light == 0


class Worker:
    def request_generate(self, turn):
        pass

    def request_cancel(self):
        pass


def test_a_dropped_step_says_its_details_were_dropped(qtbot):
    chat = ChatPanel()
    qtbot.addWidget(chat)
    controller = ChatController(chat, Worker(), lambda: None)
    controller.history.budget = 200_000  # about 20 records in full
    selected = []
    controller.step_selected.connect(selected.append)
    for first in range(0, 40, 10):
        controller.on_steps([step(i) for i in range(first, first + 10)])
    assert controller.history.light > 0
    controller.select(0)
    assert "dropped" in chat.status.text() and not selected[-1].logit_ids and selected[-1].token_id == 0
    controller.select(39)
    assert chat.status.text() == "" and len(selected[-1].logit_ids) == 512


def test_the_worker_answers_a_dropped_step_with_its_own_token(qtbot):
    from app.engine_worker import EngineWorker
    from engine.records import SamplingParams
    from widgets.probabilities_panel import ProbabilitiesPanel

    worker = EngineWorker()
    worker._engine = object()  # loaded, as far as this answer goes: it needs no engine call
    views = []
    worker.distribution.connect(views.append)
    worker._do_distribution(lighten(step(3)), SamplingParams())
    (view,) = views
    assert view.chosen_token_id == 3 and view.token_ids == (3,) and view.stages[0].probs == (0.5,)
    panel = ProbabilitiesPanel()
    qtbot.addWidget(panel)
    panel.show_distribution(view)
    assert panel.title.text().startswith("Step 3:") and panel.alternative.count() == 0  # nothing to branch to
