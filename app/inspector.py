"""Attention on demand. Nothing is captured while generating, so the stream runs on the engine's fast
path (SDPA); when the attention panel is on screen it asks for one layer, and the worker recomputes that
layer's attention by replay (Engine.attention) over the request's token ids, between two generation
steps. A hidden panel costs nothing: it is never asked for, and showing it asks again.

Two halves, one per thread:
- AttentionViews (the worker's): the views computed so far, the newest kept within
  ATTENTION_CACHE_BYTES and keyed by (ids, layer, queries), and the request generation: the GUI bumps it
  for every request and every new turn, and a replay of an older generation stops at its next chunk.
- AttentionInspector (GUI thread): the token ids on screen (the request's PromptRecord, then each step's
  token), the request when the panel wants a view, and the answer back to the panel when it is still
  the one asked for.
"""
from __future__ import annotations

from collections import OrderedDict

from PySide6.QtCore import QObject

from app.visibility import on_screen, when_shown
from engine.records import AttentionView, PromptRecord, StepRecord

ATTENTION_CACHE_BYTES = 64 << 20  # views the worker keeps (one is 4·heads·queries·context bytes)
MAX_QUERIES = 128  # rows of one view: the reply's latest steps (each row spans the whole context)


class AttentionViews:
    """Worker thread, except `bump` (GUI thread: an int store, atomic under the GIL)."""

    def __init__(self, budget: int = ATTENTION_CACHE_BYTES):
        self.budget = budget
        self.generation = 0
        self.replays = 0  # views computed, not served from the cache (tests: a hidden panel means none)
        self._views: OrderedDict[tuple, AttentionView] = OrderedDict()

    def bump(self) -> int:
        self.generation += 1
        return self.generation

    def clear(self) -> None:
        """A new model: every kept view belongs to the old one."""
        self._views.clear()

    def view(self, engine, ids: tuple[int, ...], layer: int, queries: tuple[int, int], generation: int
             ) -> AttentionView | None:
        """The view asked for, from the cache or by replay; None when a newer request came first (while
        this one waited in the queue or while it ran)."""
        if generation != self.generation:
            return None
        key = (ids, layer, queries)
        view = self._views.pop(key, None)
        if view is None:
            view = engine.attention(ids, layer, queries, cancelled=lambda: self.generation != generation)
            if view is None:
                return None
            self.replays += 1
        self._views[key] = view  # the newest last: the oldest go first when over budget
        while len(self._views) > 1 and sum(v.weights.nbytes for v in self._views.values()) > self.budget:
            self._views.popitem(last=False)
        return view


class AttentionInspector(QObject):
    """GUI thread. `panel` is the AttentionPanel (its `wanted` signal, `current_layer`, `show_computing`,
    `show_view`); `worker` the EngineWorker (`request_attention`, and its `attention` answer)."""

    def __init__(self, worker, panel, parent=None):
        super().__init__(parent)
        self.worker, self.panel = worker, panel
        self.ids: list[int] = []  # the request on screen: its prompt, then each generated token
        self.texts: list[str] = []  # and their texts (the panel's key axis)
        self.prompt_len = 0
        self.request_id = -1
        self.query: int | None = None
        self.asked: tuple | None = None  # (ids, layer, queries) of the view asked for or shown
        self.generation = -1  # the worker's generation of that request: only its answer is drawn
        panel.wanted.connect(self.refresh)
        when_shown(panel, self.refresh)  # its tab brought to the front
        worker.attention.connect(self.on_view)  # a GUI-thread slot: delivered queued

    def start(self, prompt: PromptRecord) -> None:
        """A new request: the panel shows its steps only."""
        self.ids, self.texts = list(prompt.token_ids), list(prompt.token_texts)
        self.prompt_len, self.asked, self.request_id = len(self.ids), None, prompt.request_id
        self.query = None  # the selected token's query position the panel was told (None: the newest)
        self.panel.clear()
        self.panel.select_query(None)
        self.panel.set_token_labels(self.texts)

    def reset(self) -> None:
        """A new model: the ids on screen were the old one's."""
        self.ids, self.texts, self.prompt_len, self.asked = [], [], 0, None

    def add(self, records: list[StepRecord]) -> None:
        for r in records:
            if r.seq_index == 0:  # the window asks for one sample per request
                self.ids.append(r.token_id)
                self.texts.append(r.text)
        self.panel.set_token_labels(self.texts)

    def select(self, record: StepRecord, following: bool) -> None:
        """The token selected in the chat: its query row is outlined (and asked for, if the view on screen
        does not hold it). While a reply streams the panel follows its newest row instead; a token of an
        earlier request has no row here."""
        if following:
            query = None  # told once, not on every tick: the panel redraws when told
        elif record.seq_index == 0 and record.request_id == self.request_id:
            query = self.prompt_len - 1 + record.index
        else:
            return
        if query != self.query:
            self.query = query
            self.panel.select_query(query)

    def refresh(self, *_) -> None:
        """Ask for the view the panel wants, if it is on screen and does not show it already. Step i's
        row is the query that produced it: position prompt_len - 1 + i, over every position up to it.
        The rows asked for are the reply's latest MAX_QUERIES, or ones around the selected token's."""
        if not on_screen(self.panel) or len(self.ids) <= self.prompt_len:
            return
        end = len(self.ids) - 1  # the newest token has not been a query yet
        queries = (max(self.prompt_len - 1, end - MAX_QUERIES), end)
        wanted_row = self.panel.wanted_query()
        if wanted_row is not None and self.prompt_len - 1 <= wanted_row < end and not (
                queries[0] <= wanted_row < queries[1]):
            start = max(self.prompt_len - 1, min(wanted_row - MAX_QUERIES // 2, end - MAX_QUERIES))
            queries = (start, min(end, start + MAX_QUERIES))
        wanted = (tuple(self.ids[:end]), self.panel.current_layer(), queries)
        if wanted == self.asked:
            return
        self.asked = wanted
        self.panel.show_computing()
        self.generation = self.worker.request_attention(*wanted)

    def on_view(self, view: AttentionView, generation: int) -> None:
        if generation == self.generation:  # an older answer (another layer, an earlier turn) is dropped
            self.panel.show_view(view)
