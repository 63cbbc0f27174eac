"""Records from the worker to the panels. Steps are buffered as they arrive and handed to the chat
controller and the panels together on a ~30 Hz timer, so fast decoding cannot flood the GUI with
redraws. The selected step (the newest while a reply streams, or the token clicked in the chat) is
shown in the routing panel and its sampler what-if is asked of the worker, which answers with a
DistributionView for the probabilities panel (wired in app/main_window.py)."""
from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

from engine.records import StepRecord

REDRAW_MS = 33


class RecordHub(QObject):
    def __init__(self, worker, controller, sampler_params, routing, attention, memory):
        super().__init__()
        self.worker, self.controller, self.sampler_params = worker, controller, sampler_params
        self.routing, self.attention, self.memory = routing, attention, memory
        self.selected: StepRecord | None = None
        self.pending: list[StepRecord] = []  # arrived since the last tick
        self.token_texts: list[str] = []  # attention axis labels: the prompt's tokens, then each generated one
        self.routed: list[StepRecord] = []  # the steps the routing panel holds, in its order
        self.timer = QTimer(self, interval=REDRAW_MS, timeout=self.flush)
        self.timer.start()

    # -- from the worker (queued, GUI thread) -------------------------------------------------
    def on_turn_started(self, start) -> None:
        """A new request: the routing and attention panels show its steps only."""
        self.token_texts = list(start.prompt.token_texts)
        self.routed = []
        self.routing.clear()
        self.attention.clear()
        self.attention.set_token_labels(self.token_texts)

    def on_step(self, record: StepRecord) -> None:
        self.pending.append(record)

    def flush(self, *_) -> None:
        """Timer tick (and the end of a reply): hand everything that arrived since the last tick to the
        controller and the panels, once."""
        if not self.pending:
            return
        records, self.pending = self.pending, []
        self.controller.on_steps(records)
        for r in records:
            self.routing.add_step(r)
            if r.routing:  # the routing panel keeps only steps that were routed
                self.routed.append(r)
            self.attention.add_step(r)
            self.token_texts.append(r.text)
        self.attention.set_token_labels(self.token_texts)
        last = records[-1]
        if last.memory is not None:
            self.memory.show_memory(last.memory)
        self.select(last)

    # -- selection ----------------------------------------------------------------------------
    def select(self, record: StepRecord) -> None:
        self.selected = record
        # Searched from the end: while a reply streams the newest step is selected on every tick.
        index = next((i for i in range(len(self.routed) - 1, -1, -1) if self.routed[i] is record), -1)
        self.routing.select_step(index)  # -1 (an earlier request's step) leaves the panel as it is
        self.show_distribution()

    def show_distribution(self, *_) -> None:
        """Ask the worker for the selected step under the sampler's current values (no forward pass)."""
        if self.selected is not None and self.selected.logit_ids:
            self.worker.request_distribution(self.selected, self.sampler_params())

    def continue_with(self, token_id: int) -> None:
        """The probabilities panel's "continue from here with this token", for the selected step."""
        if self.selected is not None:
            self.controller.continue_with(self.selected, token_id)
