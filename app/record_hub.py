"""Records from the worker to the panels. Steps are buffered as they arrive and handed to the chat
controller and the panels together on a timer whose period adapts to what the redraws cost: the GUI
thread's CPU time per tick (its handlers and the paints that follow, measured with time.thread_time)
is kept under GUI_SHARE (3%) of the wall time, between 30 and 2 ticks a second. The GUI thread shares the
engine's GIL and cores, so every millisecond it spends drawing is one the decode loop may wait: a fast
machine gets 30 Hz panels, a small one fewer redraws instead of a slower model.

The selected step (the newest while a reply streams, or the token clicked in the chat) is shown in the
routing panel and its sampler what-if is asked of the worker, which answers with a
DistributionView for the probabilities panel (wired in app/main_window.py); while a reply streams, at
most every DISTRIBUTION_EVERY_S.

Attention is not in the records: the AttentionInspector (app/inspector.py) is handed the request's
token ids and asks the worker for a view only while the attention panel is on screen, at the end of a
reply or when the panel asks. The memory panel gets the newest step's snapshot every MEMORY_EVERY_S and
at the end of a reply, and the worker's snapshot after a load (a new model: the old one's figures are
cleared first).

A served request chosen in the Requests list (app/serving.py) is *watched*: the panels show its prompt
and steps by the same path as a chat reply (routing, attention's tokens, the contexts the lens and the
penalties read, the selected step), its distribution under the sampler values its client asked for, and
they follow its newest step while it streams. The chat still gets its own steps; a chat turn starting or
a chat token clicked brings the panels back to the chat.

The worker's `attention` and `memory` signals are connected here (to GUI-thread slots, so queued)."""
from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer

from app.history import step_key
from app.contexts import RequestContexts
from app.inspector import AttentionInspector
from engine.records import MemorySnapshot, PromptRecord, RequestDone, SamplingParams, StepRecord

REDRAW_MS = 33  # the fastest tick
SLOWEST_MS = 500
MEMORY_EVERY_S = 0.5  # the memory panel's figures and RSS curve while a reply streams, and at its end
# The newest step's sampler what-if while a reply streams (a click or a slider is answered at once): the
# worker computes it between two decode steps, and bars that change 30 times a second are not read anyway.
DISTRIBUTION_EVERY_S = 0.25
# Of the wall time, the GUI thread's CPU time while a reply streams. At 5% the window decoded at ~0.85x
# the engine on 2 cores (the GUI's Python holds the GIL the decode loop's Python needs, and its paints
# take a core from the matmul threads); at 3% it decodes at ~0.94x, and a redraw with every default panel
# costing ~11 ms of GUI CPU there, the window redraws about 3 times a second (docs/benchmarks.md).
GUI_SHARE = 0.03


def next_interval(previous_ms: float, gui_cpu_s: float, wall_s: float) -> float:
    """The tick period that keeps the GUI thread's CPU time at GUI_SHARE, given what the last period cost
    (gui_cpu_s of GUI-thread CPU over wall_s); smoothed, so one slow paint does not halve the frame rate."""
    if wall_s <= 0:
        return previous_ms
    wanted = 1000 * gui_cpu_s / GUI_SHARE
    return min(SLOWEST_MS, max(REDRAW_MS, 0.5 * previous_ms + 0.5 * wanted))


class RecordHub(QObject):
    def __init__(self, worker, controller, sampler_params, routing, attention, memory, inspections=None):
        super().__init__()
        self.worker, self.controller, self.sampler_params = worker, controller, sampler_params
        self.routing, self.attention, self.memory = routing, attention, memory
        self.inspector = AttentionInspector(worker, attention, self)
        self.contexts = RequestContexts()  # each recent request's ids: the selected token's context
        self.inspections = inspections  # app/inspections.py: lens, what-if, drift (None in some tests)
        self.selected: StepRecord | None = None
        self.pending: list[StepRecord] = []  # arrived since the last tick
        self.routed: list[tuple] = []  # step_key of the steps the routing panel holds, in its order
        self.timer = QTimer(self, interval=REDRAW_MS, timeout=self.flush)
        self.timer.start()
        self._clock = (time.perf_counter(), time.thread_time())  # at the last tick that drew
        self._memory_at = 0.0  # when the memory panel was last given a snapshot
        self._pending_memory: MemorySnapshot | None = None  # the newest step's, not yet shown
        self._asked_at = 0.0  # when the newest step's what-if was last asked for while streaming
        self._distribution_due = False  # the selected step's what-if is not yet asked for
        self.watched: int | None = None  # the served request the panels show instead of the chat (None: the chat)
        self._watched_params: SamplingParams | None = None  # what its client asked the sampler for
        self.pending_watched: list[StepRecord] = []  # its steps arrived since the last tick
        worker.memory.connect(self.on_model_memory)
        worker.memory_changed.connect(self.on_memory_changed)

    # -- from the worker (queued, GUI thread) -------------------------------------------------
    def on_turn_started(self, start) -> None:
        """A new request: the routing and attention panels show its steps only."""
        self.watched, self.pending_watched = None, []
        self._start(start.prompt)

    def _start(self, prompt: PromptRecord) -> None:
        self.routed = []
        self.routing.clear()
        self.inspector.start(prompt)
        self.contexts.start(prompt)

    def on_steps(self, records: tuple[StepRecord, ...]) -> None:
        self.pending.extend(records)

    # -- a served request (app/serving.py, GUI thread) ----------------------------------------
    def watch(self, prompt: PromptRecord, steps, params: SamplingParams | None) -> None:
        """Show served request `prompt.request_id` in the panels as a chat reply: its prompt, the steps it
        has so far (the newest selected), then each step as it comes (on_served_steps)."""
        self.watched, self._watched_params, self.pending_watched = prompt.request_id, params, []
        self._start(prompt)
        if steps:
            self._draw(list(steps))
            self.select(steps[-1])

    def on_served_steps(self, records) -> None:
        """Steps of served requests: the watched one's are drawn at the next tick."""
        if self.watched is not None:
            self.pending_watched.extend(r for r in records if r.request_id == self.watched)

    def on_model_memory(self, snapshot: MemorySnapshot) -> None:
        """A model was loaded: its weights and empty KV pool, before the first token."""
        self.inspector.reset()
        self.contexts.reset()
        self._pending_memory = None
        self.memory.clear()
        self.memory.show_memory(snapshot)

    def on_memory_changed(self, snapshot: MemorySnapshot) -> None:
        """Memory changed between replies (the drift's float reference loaded or released): shown at once."""
        if self.controller.busy:
            return  # a streaming reply's own snapshots follow within MEMORY_EVERY_S
        self.memory.show_memory(snapshot)

    def flush(self, *args) -> None:
        """Timer tick (and the end of a reply, with its RequestDone): hand everything that arrived since
        the last tick to the controller and the panels, once. At the end of a reply the attention panel,
        if on screen, asks for the finished reply's view."""
        drawn = None
        if self.pending or self.pending_watched:
            self._pace()
        if self.pending:
            records, self.pending = self.pending, []
            self.controller.on_steps(records)
            if self.watched is None:
                drawn = records
        if self.pending_watched:
            drawn, self.pending_watched = self.pending_watched, []
        if drawn:
            self._draw(drawn)
            self.select(drawn[-1], following=True)
        done = bool(args) and isinstance(args[0], RequestDone)
        if done and self._distribution_due:
            self.show_distribution()
        # The memory panel's text and curves relayout a panel: twice a second is enough to watch memory.
        if self._pending_memory is not None and (done or time.perf_counter() - self._memory_at >= MEMORY_EVERY_S):
            self.memory.show_memory(self._pending_memory)
            self._pending_memory, self._memory_at = None, time.perf_counter()
        if done:
            self.inspector.refresh()
            if self.inspections is not None:
                self.inspections.reply_done()

    def _draw(self, records: list[StepRecord]) -> None:
        for r in records:
            self.routing.add_step(r)
            if r.routing:  # the routing panel keeps only steps that were routed
                self.routed.append(step_key(r))
        self.inspector.add(records)
        self.contexts.add(records)
        if records[-1].memory is not None:
            self._pending_memory = records[-1].memory

    def _pace(self) -> None:
        """Set the next tick from the GUI thread's CPU time since the last tick that drew (this tick's
        drawing is paid for by the next period). thread_time() is the calling (GUI) thread's CPU time."""
        wall, cpu = time.perf_counter(), time.thread_time()
        then_wall, then_cpu = self._clock
        self._clock = (wall, cpu)
        if wall - then_wall < 2 * SLOWEST_MS / 1000:  # an idle gap says nothing of the drawing's cost
            self.timer.setInterval(round(next_interval(self.timer.interval(), cpu - then_cpu, wall - then_wall)))

    # -- selection ----------------------------------------------------------------------------
    def select(self, record: StepRecord, following: bool = False) -> None:
        """Show `record`: clicked in the chat, or (`following`) the newest step of a streaming reply, whose
        what-if is asked for at most every DISTRIBUTION_EVERY_S (and at the reply's end)."""
        if self.watched is not None and record.request_id != self.watched:
            self._back_to_chat(record)
        self.selected = record
        key = step_key(record)
        # Searched from the end: while a reply streams the newest step is selected on every tick.
        index = next((i for i in range(len(self.routed) - 1, -1, -1) if self.routed[i] == key), -1)
        if index < 0 and not following and record.routing:
            index = self._route_request_of(record)  # a token of an earlier reply: show that reply's routing
        self.routing.select_step(index)
        self.inspector.select(record, following)
        if self.inspections is not None:
            self.inspections.select(record, following)
        if following and time.perf_counter() - self._asked_at < DISTRIBUTION_EVERY_S:
            self._distribution_due = True
            return
        self._asked_at = time.perf_counter() if following else 0.0
        self.show_distribution()

    def _back_to_chat(self, record: StepRecord) -> None:
        """A chat token clicked while a served request is watched: the attention panel gets that token's
        reply back (the routing panel is refilled by select, the contexts still hold it if recent)."""
        self.watched, self.pending_watched = None, []
        steps = [s for s in self.controller.steps if s.request_id == record.request_id and s.seq_index == 0]
        before = self.contexts.before(steps[0]) if steps else None
        if before is not None:
            self.inspector.start(PromptRecord(record.request_id, *before))
            self.inspector.add(steps)

    def _route_request_of(self, record: StepRecord) -> int:
        """Refill the routing panel with the steps of `record`'s request (the chat keeps them; the oldest may
        have lost their routing to the history budget) and return `record`'s place among them."""
        key = step_key(record)
        steps = [s for s in self.controller.steps if s.request_id == record.request_id and s.seq_index == 0]
        self.routing.clear()
        self.routed = []
        for s in steps:
            self.routing.add_step(s)
            if s.routing:
                self.routed.append(step_key(s))
        return self.routed.index(key) if key in self.routed else -1

    def show_distribution(self, *_) -> None:
        """Ask the worker for the selected step under the sampler's current values (no forward pass; a
        step whose details were dropped shows its own token only)."""
        self._distribution_due = False
        if self.selected is not None:
            before = self.contexts.before(self.selected)  # what the penalties count
            params = self._watched_params if self.watched is not None and self._watched_params else \
                self.sampler_params()
            self.worker.request_distribution(self.selected, params, before[0] if before else ())

    def continue_with(self, token_id: int) -> None:
        """The probabilities panel's "continue from here with this token", for the selected step."""
        if self.selected is not None and self.watched is None:  # a served request is not the chat's to branch
            self.controller.continue_with(self.selected, token_id)
