"""The one thread that talks to the engine. Lives on a QThread; everything crosses by queued signals.

The GUI thread calls the `request_*` methods, which only emit signals (queued into the worker's
thread) or set a threading.Event (cancel), so the GUI never waits on the engine and never touches it:
prompts are rendered, tokens detokenized, tool calls run and distributions re-derived here, and
what comes back is plain records (engine.records, or the small frozen ones below).

A reply advances one engine step per event-loop turn (a queued `_pump`), so a distribution request
or a cancel that arrives while a reply streams is served between two steps. A second generate
request while a reply runs is refused with `failed` (the chat controller never sends one).
"""
from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QStandardPaths, Qt, Signal

from engine.errors import EngineError
from engine.records import (InstrumentOptions, LoadOptions, PromptRecord, RequestDone, SamplingParams,
                            SpeculativeOptions, StepRecord)

BUILTIN_MOE_PATH = "builtin:moe"  # the model panel's second built-in model (Engine.ensure_builtin_moe)
TOOL_MODES = ("none", "offered", "auto", "required")


# What the panels need from every step: top tokens, stored logits for slider what-ifs, routing,
# one layer's attention and the memory map.
def default_instrumentation(n_layers: int) -> InstrumentOptions:
    return InstrumentOptions(top_n=20, stored_logits=512, routing=True,
                             attention_layers=tuple(range(n_layers)), memory=True)


@dataclass(frozen=True)
class Turn:
    """A generate request: a reply to chat `messages`, or (no messages) a branch of the last reply that
    continues `prompt_ids + kept_ids`. `tools`: "none"; "offered" (the built-in tools are rendered into
    the prompt, the reply is free); "auto" (constrained to a call or prose); "required" (to a call)."""

    params: SamplingParams
    messages: tuple[dict, ...] = ()
    tools: str = "none"
    prompt_ids: tuple[int, ...] = ()
    kept_ids: tuple[int, ...] = ()  # the reply's tokens before the branch point, then the chosen token
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)

    def __post_init__(self):
        if self.tools not in TOOL_MODES:
            raise ValueError(f"tools must be one of {TOOL_MODES}, not {self.tools!r}")


@dataclass(frozen=True)
class TurnStart:
    """Sent before a reply's first step: the whole prompt the model continues (ids and each token's text)
    and, for a branch, how many of its last tokens belong to the reply already and their text."""

    prompt: PromptRecord
    kept: int = 0
    kept_text: str = ""

    @property
    def chat_prompt_ids(self) -> tuple[int, ...]:
        """The turn's prompt without the reply's kept tokens: what a later branch continues from."""
        return self.prompt.token_ids[:len(self.prompt.token_ids) - self.kept]


@dataclass(frozen=True)
class ToolCall:
    """A call of a built-in tool that a reply made, already run (`result` None: the user answers it)."""

    name: str
    arguments: dict
    call: dict  # the entry an assistant message's `tool_calls` list holds
    result: str | None

    def result_message(self, content: str) -> dict:
        return {"role": "tool", "name": self.name, "content": content}


class EngineWorker(QObject):
    # outputs (emitted in the worker thread, delivered queued to GUI-thread slots)
    loaded = Signal(object)  # ModelFacts
    load_progress = Signal(int, int)  # done bytes, total bytes
    load_failed = Signal(str)
    turn_started = Signal(object)  # TurnStart
    step = Signal(object)  # StepRecord
    tool_calls = Signal(object)  # tuple[ToolCall, ...]: sent just before `finished` when the reply made calls
    finished = Signal(object)  # RequestDone
    failed = Signal(str)  # a request refused or broken; the conversation is kept
    distribution = Signal(object)  # DistributionView, the answer to request_distribution
    # inputs (queued into the worker thread)
    _load = Signal(str, object, object)
    _generate = Signal(object)
    _distribution = Signal(object, object)
    _set_speculative = Signal(object)
    _pump = Signal()

    def __init__(self):
        super().__init__()
        self._engine = None  # worker thread only
        self._facts = None
        self._stream = None  # the running reply's Engine.stream iterator
        self._running = ("none", 0, "")  # and its tool mode, kept tokens and their text (see TurnStart)
        self._speculative = SpeculativeOptions()
        self._load_cancel = threading.Event()  # GUI thread: the latest request's, for request_cancel
        self._turn_cancel = threading.Event()
        self._load.connect(self._do_load)
        self._generate.connect(self._do_generate)
        self._distribution.connect(self._do_distribution)
        self._set_speculative.connect(self._do_speculative)
        # Queued even though sender and receiver share the thread: each step is its own event.
        self._pump.connect(self._advance, Qt.QueuedConnection)

    # -- called from the GUI thread -----------------------------------------------------------
    def request_load(self, path: str | None, options: LoadOptions) -> None:
        self._load_cancel = threading.Event()
        self._load.emit(path or "", options, self._load_cancel)

    def request_generate(self, turn: Turn) -> None:
        self._turn_cancel = turn.cancel
        self._generate.emit(turn)

    def request_distribution(self, record: StepRecord, params: SamplingParams) -> None:
        self._distribution.emit(record, params)

    def request_cancel(self) -> None:
        """Stop the latest load or reply (at its next progress report or step)."""
        self._load_cancel.set()
        self._turn_cancel.set()

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
        self._engine, self._facts = engine, facts
        self.loaded.emit(facts)

    def _do_generate(self, turn: Turn) -> None:
        if self._engine is None:
            self.failed.emit("no model is loaded")
            return
        if self._stream is not None:
            self.failed.emit("a reply is being generated: stop it first")
            return
        engine = self._engine
        # Models whose template ignores `tools` get the plain chat: offering tools would do nothing.
        tools = turn.tools if self._facts.supports_tools else "none"
        try:
            if turn.messages:
                messages = list(turn.messages)
                ids = engine.tool_prompt_ids(messages) if tools != "none" else engine.chat_prompt_ids(messages)
            else:
                ids = list(turn.prompt_ids) + list(turn.kept_ids)
            params = engine.tool_call_params(turn.params, tools == "required") if tools in ("auto", "required") \
                else turn.params
            request = engine.make_request(ids, params, instrument=default_instrumentation(self._facts.layers),
                                          speculative=self._speculative)
            kept_text = engine.decode(turn.kept_ids) if turn.kept_ids else ""
        except Exception as e:  # a template that cannot render these messages, a bad constraint, ...
            self.failed.emit(str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}")
            return
        self._running = (tools, len(turn.kept_ids), kept_text)
        self._stream = engine.stream(request, turn.cancel)
        self._pump.emit()

    def _advance(self) -> None:
        """One item of the running reply; the next one waits for the next event-loop turn."""
        if self._stream is None:
            return
        try:
            item = next(self._stream)
        except StopIteration:
            self._stream = None
            return
        except Exception as e:  # the engine cleans up its own blocks on errors it knows; report the rest
            self._stream = None
            self.failed.emit(f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return
        if isinstance(item, PromptRecord):
            self.turn_started.emit(TurnStart(item, *self._running[1:]))
        elif isinstance(item, StepRecord):
            self.step.emit(item)
        elif isinstance(item, RequestDone):
            self._stream = None
            self._finish(item)
            return
        self._pump.emit()

    def _finish(self, done: RequestDone) -> None:
        tools, _, kept_text = self._running
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

    def _do_distribution(self, record: StepRecord, params: SamplingParams) -> None:
        """The sampler what-if: re-derived from the record's stored logits, no forward pass."""
        if self._engine is None or not record.logit_ids:
            return
        try:
            self.distribution.emit(self._engine.distribution(record, params))
        except Exception as e:  # e.g. a constraint the new params cannot compile: keep the old view
            traceback.print_exc()
            print(f"distribution: {type(e).__name__}: {e}")
