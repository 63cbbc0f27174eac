"""The one thread that talks to the engine. Lives on a QThread; everything crosses by queued signals.

The GUI thread calls the `request_*` methods, which only emit signals (queued into the worker's
thread) or set a threading.Event (cancel), so the GUI never waits on the engine and never touches it:
prompts are rendered, tokens detokenized, tool calls run and distributions re-derived here, and
what comes back is plain records (engine.records, or the small frozen ones of app/turn.py).

The engine advances one step per event-loop turn (a queued `_pump`) while anything is in flight, so a
distribution request, an attention request or a cancel that arrives while a reply streams is served
between two steps. Each step (Engine.step) advances every request in flight together, the chat's reply
and the requests served over HTTP (app/serving.py), and each record goes to its owner: the chat's steps
to the GUI thread in batches (`steps`, every STEP_BATCH_S; the first token at once); a served request's
to its listener (the HTTP front) and, batched the same way, to `served` (the Requests panel). A second
generate request while a reply runs is refused with `failed` (the chat controller never sends one), and
so is a turn whose prompt does not fit the model's context (app/turn.py), before any compute.

The worker is also the HTTP front's Backend (app/serve/backend.py): run / submit / cancel are called from
the server's thread and only queue a job here (a deque, woken by a queued `_wake`), which runs between two
steps and resolves its Future on this thread. With nothing served, a step costs what Engine.stream did.

The stream carries light records only (default_instrumentation): the chosen token, top-N, stored
logits, routing and a memory snapshot; no attention, so generation runs the engine's fast path (SDPA).
Attention is computed on request (request_attention) by replay, cancellable and cached (app/inspector.py).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, QStandardPaths, Qt, Signal

from app.inspector import AttentionViews
from app.serve.backend import Listener, ServedModel
from app.turn import TOOL_MODES, ToolCall, Turn, TurnStart, prompt_does_not_fit  # noqa: F401 (re-exported)
from engine.errors import EngineError
from engine.records import (DistributionView, InstrumentOptions, LoadOptions, PromptRecord, RequestDone,
                            SamplingParams, SpeculativeOptions, StageView, StepRecord)

BUILTIN_MOE_PATH = "builtin:moe"  # the model panel's second built-in model (Engine.ensure_builtin_moe)
# Steps cross to the GUI thread in batches: a queued signal per token cost the GUI thread (which shares the
# cores and the GIL with the decode loop) a wake-up and a dispatch per token, and the panels redraw at most
# ~30 times a second anyway (app/record_hub.py).
STEP_BATCH_S = 0.03
# What request_inspection can ask for: kind -> (Engine method, whether it takes `cancelled`). Heavy ones
# replay the conversation (a forward over its ids), so the GUI asks only while their panel is on screen.
INSPECTIONS = {"lens": ("logit_lens", True), "intervention": ("intervene", True),
               "drift": ("quant_drift", True), "rope": ("rope_view", False),
               "adapter": ("adapter_comparison", True)}


def default_instrumentation(n_layers: int = 0) -> InstrumentOptions:
    """What the panels need from every step: the stored logits the probabilities panel re-derives its
    views from (the top 512, sorted), routing and the memory map; and the top 5 tokens before and after
    the sampler, which no panel draws but a conversation exported with its records keeps (Python
    objects: 20 of them cost ~4.6 KB a token). No attention rows: the attention panel asks for one layer
    when it is shown (request_attention), so `n_layers` no longer matters (kept for callers that pass it)."""
    return InstrumentOptions(top_n=5, stored_logits=512, routing=True, memory=True)


def watched_instrumentation(asked: InstrumentOptions) -> InstrumentOptions:
    """A served request's instrumentation: what it asked for (its top_logprobs), and what the panels need to
    show it as a chat reply when it is selected in the Requests list."""
    return replace(default_instrumentation(), top_n=max(asked.top_n, 5))


@dataclass(frozen=True)
class ServedStart:
    """A served request as the window first sees it (in `served`, before its steps)."""

    prompt: PromptRecord  # its request id, prompt ids and their texts
    params: SamplingParams  # what the client asked the sampler for
    endpoint: str  # the HTTP path it came by ("" when unknown)
    at: float  # time.time() when it was submitted


def _oldest_turn(messages: list[dict]) -> slice | None:
    """Where the oldest droppable turn lies: from the first message that is not the system prompt up to the
    next user message. None when that turn is the newest one (it holds the message being answered)."""
    start = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(messages)) if messages[i].get("role") == "user"), None)
    return None if end is None else slice(start, end)


class EngineWorker(QObject):
    # outputs (emitted in the worker thread, delivered queued to GUI-thread slots)
    loaded = Signal(object)  # ModelFacts
    load_progress = Signal(int, int)  # done bytes, total bytes
    load_failed = Signal(str)
    turn_started = Signal(object)  # TurnStart
    steps = Signal(object)  # tuple[StepRecord, ...]: the steps of the last STEP_BATCH_S (or fewer), in order
    tool_calls = Signal(object)  # tuple[ToolCall, ...]: sent just before `finished` when the reply made calls
    finished = Signal(object)  # RequestDone
    failed = Signal(str)  # a request refused or broken; the conversation is kept
    distribution = Signal(object)  # DistributionView, the answer to request_distribution
    attention = Signal(object, int)  # AttentionView and the request's generation (request_attention's return)
    memory = Signal(object)  # MemorySnapshot right after a load: the model's weights and KV pool, before a token
    # The answer to request_inspection: its kind, the view (or a str saying why there is none) and the
    # generation request_inspection returned.
    inspected = Signal(str, object, int)
    # The memory now, after something changed it outside a reply (the drift's float reference loaded or freed)
    memory_changed = Signal(object)
    # request_count's answer: the prompt tokens those messages take (or why they make no prompt: a template
    # that does not render them, said in the template's own words)
    counted = Signal(int)
    count_failed = Signal(str)
    template = Signal(str)  # after each load: the model's own chat template source (or a note: it has none)
    builtin_templates = Signal(object)  # after each load: dict name -> source of the templates offered besides
    # Served requests' records, in order, batched like `steps`: a ServedStart, then StepRecords, then RequestDone
    served = Signal(object)
    # inputs (queued into the worker thread)
    _load = Signal(str, object, object)
    _generate = Signal(object)
    _distribution = Signal(object, object, object)
    _inspect = Signal(str, object, int)
    _release_reference = Signal()
    _set_interventions = Signal(object)
    _attention = Signal(object, int, object, int)
    _set_speculative = Signal(object)
    _pump = Signal()
    _count = Signal(object, object, int)
    _wake = Signal()  # jobs queued by other threads (run / submit / cancel) wait in _jobs

    def __init__(self):
        super().__init__()
        self._engine = None  # worker thread only
        self._facts = None
        self.model: ServedModel | None = None  # the Backend's model, set at each load (worker thread)
        self._chat: int | None = None  # the running reply's request id
        self._chat_cancel = threading.Event()  # its turn's cancel, and whether the engine was told
        self._chat_cancelled = False
        self._stepping = False  # a `_pump` is queued: the engine steps until nothing is in flight
        self._jobs: deque = deque()  # callables from other threads, run here between two steps
        self._listeners: dict[int, Listener] = {}  # served request id -> the HTTP front's listener
        self._served_out: list = []  # served records not yet sent, and when the last batch went
        self._served_at = 0.0
        self._running = ("none", 0, "")  # and its tool mode, kept tokens and their text (see TurnStart)
        self._speculative = SpeculativeOptions()
        self._interventions: tuple = ()  # what the next turns generate with (request_interventions)
        self._inspections: dict[str, int] = {}  # kind -> the generation of its latest request (GUI writes)
        self._outbox: list[StepRecord] = []  # steps not yet sent, and when the last batch went
        self._sent_at = 0.0
        self._load_cancel = threading.Event()  # GUI thread: the latest request's, for request_cancel
        self._turn_cancel = threading.Event()
        self.attention_views = AttentionViews()  # worker thread; its generation is bumped from the GUI thread
        self._load.connect(self._do_load)
        self._generate.connect(self._do_generate)
        self._distribution.connect(self._do_distribution)
        self._inspect.connect(self._do_inspect)
        self._release_reference.connect(self._do_release_reference)
        self._set_interventions.connect(self._do_interventions)
        self._attention.connect(self._do_attention)
        self._set_speculative.connect(self._do_speculative)
        self._count_generation = 0  # of the latest request_count: older ones still queued are skipped
        self._count.connect(self._do_count)
        # Queued even though sender and receiver share the thread: each step is its own event.
        self._pump.connect(self._advance, Qt.QueuedConnection)
        self._wake.connect(self._run_jobs, Qt.QueuedConnection)

    # -- the Backend of app/serve (any thread: only queues a job) --------------------------------
    def run(self, fn) -> Future:
        """fn(engine) on the worker thread between two steps; the Future resolves with its result or exception."""
        future: Future = Future()

        def job():
            if not future.set_running_or_notify_cancel():
                return
            try:
                if self._engine is None:
                    raise EngineError("no model is loaded")
                future.set_result(fn(self._engine))
            except BaseException as e:  # handed to the caller, who decides
                future.set_exception(e)
        self._jobs.append(job)  # deque.append is atomic: no lock
        self._wake.emit()
        return future

    def submit(self, request, listener: Listener, endpoint: str = "") -> Future:
        """Queue a served request (resolves to its id); listener(record) gets its StepRecords and RequestDone
        on the worker thread, and the window gets them in `served`."""
        def start(engine) -> int:
            rid = engine.submit(replace(request, instrument=watched_instrumentation(request.instrument)))
            self._listeners[rid] = listener
            prompt = PromptRecord(rid, tuple(request.prompt_ids), engine.token_texts(request.prompt_ids))
            self._served_out.append(ServedStart(prompt, request.params, endpoint, time.time()))
            return rid
        return self.run(start)

    def cancel(self, request_id: int) -> None:
        """Stop a served request at the next step (any thread; nothing happens for one already done)."""
        self.run(lambda engine: engine.cancel(request_id) if request_id in self._listeners else None)

    def request_stop_served(self) -> None:
        """Cancel every served request in flight (the server is stopping): their blocks are freed."""
        self.run(lambda engine: [engine.cancel(rid) for rid in list(self._listeners)])

    # -- called from the GUI thread -----------------------------------------------------------
    def request_load(self, path: str | None, options: LoadOptions) -> None:
        self._load_cancel = threading.Event()
        self._load.emit(path or "", options, self._load_cancel)

    def request_generate(self, turn: Turn) -> None:
        self._turn_cancel = turn.cancel
        self.attention_views.bump()  # a new turn: an attention replay of the old one stops
        self._generate.emit(turn)

    def request_distribution(self, record: StepRecord, params: SamplingParams, history: tuple[int, ...] = ()
                             ) -> None:
        """The step's sampler what-if under `params`; `history` is what the penalties count (the step's prompt
        and the tokens generated before it, as the runner penalises)."""
        self._distribution.emit(record, params, tuple(history))

    def request_inspection(self, kind: str, args: tuple) -> int:
        """A view computed on request by the engine (INSPECTIONS: kind -> Engine method, called with `args`),
        answered by `inspected(kind, view, generation)` with the generation returned here. A newer
        request of the same kind cancels this one (a replay stops at its next chunk)."""
        if kind not in INSPECTIONS:
            raise ValueError(f"unknown inspection {kind!r}")
        generation = self._inspections.get(kind, 0) + 1
        self._inspections[kind] = generation  # an int store: atomic under the GIL
        self._inspect.emit(kind, tuple(args), generation)
        return generation

    def request_release_reference(self) -> None:
        """Free the float model the quantization drift loaded."""
        self._release_reference.emit()

    def request_interventions(self, interventions: tuple) -> None:
        """Generate the next turns with `interventions` (empty: the model as loaded). Applied when the next
        turn starts, never in the middle of a reply."""
        self._set_interventions.emit(tuple(interventions))

    def request_attention(self, token_ids, layer: int, queries: tuple[int, int]) -> int:
        """Layer `layer`'s attention for query positions [queries) of `token_ids`, answered by `attention`
        with the generation returned here. A newer request or turn cancels this one."""
        generation = self.attention_views.bump()
        self._attention.emit(tuple(token_ids), layer, tuple(queries), generation)
        return generation

    def request_cancel(self) -> None:
        """Stop the latest load or reply (at its next progress report or step)."""
        self._load_cancel.set()
        self._turn_cancel.set()

    def request_count(self, messages: tuple, options: dict) -> None:
        """How many prompt tokens `messages` would take under `options` (Turn's mode, template and tools),
        answered by `counted` (or `count_failed`). Only the latest request is answered."""
        self._count_generation += 1
        self._count.emit(tuple(messages), dict(options), self._count_generation)

    def request_speculative(self, options: SpeculativeOptions) -> None:
        """Speculative decoding for the requests after this one (queued: ordered with them)."""
        self._set_speculative.emit(options)

    # -- worker thread ------------------------------------------------------------------------
    def _do_load(self, path: str, options: LoadOptions, cancel: threading.Event) -> None:
        from engine.engine import Engine  # torch and the engine load here, not with the window

        def progress(done, total, done_bytes, total_bytes):
            if cancel.is_set():
                raise EngineError("loading was cancelled")
            self.load_progress.emit(done_bytes, total_bytes)

        def build_progress(stage, done, total):
            if cancel.is_set():
                raise EngineError("building the MoE model was cancelled")
            self.load_progress.emit(done, total)

        try:
            if path == BUILTIN_MOE_PATH:  # built and cached on first use (a few minutes on 2 cores)
                cache = QStandardPaths.writableLocation(QStandardPaths.CacheLocation)
                path = str(Engine.ensure_builtin_moe(Path(cache or Path.home() / ".cache" / "glassbox") / "models",
                                                     build_progress))
            engine = Engine.load(path or None, options, progress=progress)
            facts = engine.facts()
        except EngineError as e:
            self.load_failed.emit(str(e))
            return
        except Exception as e:  # a bug, or memory: report it, keep the app alive
            self.load_failed.emit(f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return
        if self._chat is not None or self._listeners:
            self._stop_all()  # what runs on the old model ends ("cancelled"), its owners told
        self._engine, self._facts = engine, facts
        self.model = ServedModel(facts.name, facts.context, facts.vocab, facts.supports_tools, int(time.time()))
        self._interventions = ()  # the old model's heads and experts mean nothing to this one
        self.attention_views.clear()
        self.loaded.emit(facts)
        self.template.emit(engine.template_source())
        self.builtin_templates.emit(engine.builtin_templates())
        self.memory.emit(engine.memory())  # the memory panel shows the new model before its first token

    def _do_generate(self, turn: Turn) -> None:
        if self._engine is None:
            self.failed.emit("no model is loaded")
            return
        if self._chat is not None:
            self.failed.emit("a reply is being generated: stop it first")
            return
        engine = self._engine
        tools = self._tool_mode(turn.tools, turn.mode, turn.template)
        dropped = 0
        try:
            if turn.messages:
                ids, dropped = self._fitted_prompt_ids(turn, tools)
            else:
                ids = list(turn.prompt_ids) + list(turn.kept_ids)
            if not ids:
                self.failed.emit("there is no text to continue")
                return
            problem = prompt_does_not_fit(len(ids), self._facts.context)
            if problem:
                self.failed.emit(problem)
                return
            params = engine.tool_call_params(turn.params, tools == "required") if tools in ("auto", "required") \
                else turn.params
            engine.set_interventions(self._interventions)  # kept on by the user, or none: never left over
            request = engine.make_request(ids, params, n=turn.n, best_of=turn.best_of, beams=turn.beams,
                                          instrument=default_instrumentation(), speculative=self._speculative)
            kept_text = engine.decode(turn.kept_ids) if turn.kept_ids else ""
        except Exception as e:  # a template that cannot render these messages, a bad constraint, ...
            self.failed.emit(str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}")
            return
        # TurnStart's fields after the prompt; the interventions (and LoRA adapters on) named so the reply says it
        # is not the model's own
        self._running = (tools, len(turn.kept_ids), kept_text, dropped,
                         tuple(i.label for i in engine.interventions)
                         + tuple(f"LoRA {a.label}" for a in engine.adapters() if a.enabled))
        self._chat = engine.submit(request)
        self._chat_cancel, self._chat_cancelled = turn.cancel, False
        self._sent_at = time.perf_counter()  # the prefill takes longer: the first token goes out at once
        self.turn_started.emit(TurnStart(PromptRecord(self._chat, tuple(ids), engine.token_texts(ids)),
                                         *self._running[1:]))
        self._kick()

    def _tool_mode(self, tools: str, mode: str, template: str | None) -> str:
        """The tools a turn really gets: none in a plain completion (no template to offer them in), nor
        under a template override (the built-ins render no tools), nor with a model whose own template
        ignores `tools` (offering them would do nothing)."""
        return tools if mode == "chat" and template is None and self._facts.supports_tools else "none"

    def _prompt_ids(self, messages: list[dict], mode: str, template: str | None, tools: str) -> list[int]:
        """The prompt of `messages`: in completion mode their text continued as it is (every message's
        content but the system prompt's, run together: Engine.completion_prompt_ids), else rendered by the
        chat template (`template`, or the model's own when None)."""
        if mode == "completion":
            return self._engine.completion_prompt_ids(messages)
        if tools != "none":
            return self._engine.tool_prompt_ids(messages)
        return self._engine.chat_prompt_ids(messages, template=template)

    def _fitted_prompt_ids(self, turn: Turn, tools: str) -> tuple[list[int], int]:
        """The turn's prompt and how many messages were dropped for it. With overflow "drop_oldest", whole
        turns (a user message and what answered it) go, oldest first, until the prompt leaves room for the
        reply (max_new_tokens, at most half the context); the system prompt and the newest turn stay."""
        messages = list(turn.messages)
        ids = self._prompt_ids(messages, turn.mode, turn.template, tools)
        if turn.overflow != "drop_oldest":
            return ids, 0
        room = max(1, min(turn.params.max_new_tokens, self._facts.context // 2))
        dropped = 0
        while len(ids) + room > self._facts.context:
            oldest = _oldest_turn(messages)
            if oldest is None:
                break  # only the system prompt and the newest turn are left: prompt_does_not_fit says so
            del messages[oldest]
            dropped += oldest.stop - oldest.start
            ids = self._prompt_ids(messages, turn.mode, turn.template, tools)
        return ids, dropped

    def _do_count(self, messages: tuple, options: dict, generation: int) -> None:
        if self._engine is None or generation != self._count_generation:
            return
        mode, template = options.get("mode", "chat"), options.get("template")
        try:
            ids = self._prompt_ids(list(messages), mode, template,
                                   self._tool_mode(options.get("tools", "none"), mode, template))
        except Exception as e:  # a template that does not render: the template panel shows why
            self.count_failed.emit(str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}")
            return
        self.counted.emit(len(ids))

    def _run_jobs(self) -> None:
        """What other threads queued (the HTTP front's run / submit / cancel), between two steps."""
        while self._jobs:
            self._jobs.popleft()()
        self._send_served()  # a new request shows in the Requests list before its prefill
        self._kick()

    def _kick(self) -> None:
        """Start stepping if something is in flight and no step is queued yet."""
        if not self._stepping and self._engine is not None and self._engine.has_work():
            self._stepping = True
            self._pump.emit()

    def _advance(self) -> None:
        """One engine step over every request in flight; the next one waits for the next event-loop turn."""
        if self._chat is None and not self._listeners and not self._engine.has_work():
            self._stepping = False  # everything ended while this step waited (a model was replaced)
            return
        if not self._chat_cancelled and self._chat is not None and self._chat_cancel.is_set():
            self._engine.cancel(self._chat)
            self._chat_cancelled = True
        try:
            records = self._engine.step()
        except Exception as e:  # the engine cleans up its own blocks on errors it knows; report the rest
            self._stepping = False
            self._fail_all(f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return
        for record in records:
            if record.request_id == self._chat:
                self._chat_record(record)
            else:
                self._served_record(record)
        if self._served_out and time.perf_counter() - self._served_at >= STEP_BATCH_S:
            self._send_served()
        if self._chat is not None or self._listeners:
            self._pump.emit()
        else:
            self._stepping = False
            self._send_served()
            self._kick()  # work nobody here owns (a request another caller submitted through run)

    def _chat_record(self, record) -> None:
        if isinstance(record, StepRecord):
            self._outbox.append(record)
            if time.perf_counter() - self._sent_at >= STEP_BATCH_S:
                self._send_steps()
        elif isinstance(record, RequestDone):
            self._chat = None
            self._send_steps()
            self._finish(record)

    def _served_record(self, record) -> None:
        listener = self._listeners.get(record.request_id)
        if listener is None:
            return  # a request that ended already (cancelled after an engine failure)
        if isinstance(record, RequestDone):
            del self._listeners[record.request_id]
        self._served_out.append(record)
        try:
            listener(record)
        except Exception:  # the front's bug must not stop the chat's reply
            traceback.print_exc()

    def _send_served(self) -> None:
        if self._served_out:
            batch, self._served_out = tuple(self._served_out), []
            self.served.emit(batch)
        self._served_at = time.perf_counter()

    def _fail_all(self, error: str) -> None:
        """The engine broke a step: every request in flight ends with the error (the chat keeps its
        conversation; served clients get their RequestDone) and is cancelled, so its blocks can be freed."""
        for rid in list(self._listeners):
            self._engine.cancel(rid)
            self._served_record(RequestDone(rid, (), 0, 0, 0.0, 0.0, error=f"the engine failed: {error}"))
        self._send_served()
        if self._chat is not None:
            self._engine.cancel(self._chat)
            self._chat = None
            self._send_steps()
            self.failed.emit(error)

    def _stop_all(self) -> None:
        """Cancel everything in flight and step until each has said it is done (a model is being replaced)."""
        for rid in list(self._listeners) + ([self._chat] if self._chat is not None else []):
            self._engine.cancel(rid)
        while self._chat is not None or self._listeners:
            try:
                records = self._engine.step()
            except Exception as e:
                self._fail_all(f"{type(e).__name__}: {e}")
                break
            for record in records:
                (self._chat_record if record.request_id == self._chat else self._served_record)(record)
        self._send_served()

    def _send_steps(self) -> None:
        if self._outbox:
            batch, self._outbox = tuple(self._outbox), []
            self.steps.emit(batch)
        self._sent_at = time.perf_counter()

    def _finish(self, done: RequestDone) -> None:
        tools, _, kept_text = self._running[:3]
        result = done.results[0] if done.results else None
        if tools != "none" and not done.error and result is not None and result.finish_reason == "eos":
            try:
                calls = tuple(ToolCall(**c) for c in self._engine.run_tool_calls(kept_text + result.text))
            except Exception:  # never lose the reply over a tool: it stays a prose reply
                calls = ()
                traceback.print_exc()
            if calls:
                self.tool_calls.emit(calls)
        self.finished.emit(done)

    def _do_speculative(self, options: SpeculativeOptions) -> None:
        self._speculative = options  # read when the next request is built

    def _do_distribution(self, record: StepRecord, params: SamplingParams, history: tuple = ()) -> None:
        """The sampler what-if: re-derived from the record's stored logits, no forward pass. A record
        whose details the history budget dropped (app/history.py) shows its own token only."""
        if self._engine is None:
            return
        if not record.logit_ids:
            self.distribution.emit(DistributionView(record.index, record.token_id, (record.token_id,),
                                                    (record.text,), (StageView("raw", True, (record.prob,), ()),),
                                                    record.entropy, 1.0))
            return
        try:
            self.distribution.emit(self._engine.distribution(record, params, history=history))
        except Exception as e:  # e.g. a constraint the new params cannot compile: keep the old view
            traceback.print_exc()
            print(f"distribution: {type(e).__name__}: {e}")

    def _do_attention(self, ids: tuple, layer: int, queries: tuple, generation: int) -> None:
        """One layer's attention by replay (or from the cache), between two steps of a running reply."""
        if self._engine is None:
            return
        try:
            view = self.attention_views.view(self._engine, ids, layer, queries, generation)
        except Exception as e:  # a layer or range the model does not have: the panel keeps what it had
            traceback.print_exc()
            print(f"attention: {type(e).__name__}: {e}")
            return
        if view is not None:
            self.attention.emit(view, generation)

    def _do_inspect(self, kind: str, args: tuple, generation: int) -> None:
        """A heavy view by replay (or a cheap one), between two steps of a running reply. Stale requests
        (a newer one of the same kind was made) are skipped, and a running replay stops at its next chunk."""
        if self._engine is None or self._inspections.get(kind) != generation:
            return
        method, cancellable = INSPECTIONS[kind]
        kwargs = {"cancelled": lambda: self._inspections.get(kind) != generation} if cancellable else {}
        try:
            view = getattr(self._engine, method)(*args, **kwargs)
        except (EngineError, ValueError) as e:  # e.g. a float model has no quantization drift
            view = str(e)
        except Exception as e:  # a bug: say so in the panel, keep the app alive
            traceback.print_exc()
            view = f"{type(e).__name__}: {e}"
        if view is not None:
            self.inspected.emit(kind, view, generation)
        if kind == "drift":  # the float reference may have been loaded: the memory panel shows its cost
            self.memory_changed.emit(self._engine.memory())

    def _do_release_reference(self) -> None:
        if self._engine is not None:
            self._engine.release_float_reference()
            self.memory_changed.emit(self._engine.memory())

    def _do_interventions(self, interventions: tuple) -> None:
        self._interventions = interventions  # read when the next turn starts
