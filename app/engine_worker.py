"""The one thread that talks to the engine. Lives on a QThread; everything crosses by queued signals.

The GUI thread calls `request_*` methods, which only emit signals (queued into the worker's
thread) or set a threading.Event (cancel), so the GUI never waits on the engine.
"""
from __future__ import annotations

import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from engine.errors import EngineError
from engine.records import (InstrumentOptions, PromptRecord, RequestDone, SamplingParams, SpeculativeOptions,
                            StepRecord)

BUILTIN_MOE_PATH = "builtin:moe"  # the model panel's second built-in model (engine.moefy.build.BUILTIN_MOE)


# What the panels need from every step: top tokens, stored logits for slider what-ifs, routing,
# one layer's attention and the memory map.
def default_instrumentation(n_layers: int) -> InstrumentOptions:
    return InstrumentOptions(top_n=20, stored_logits=512, routing=True,
                             attention_layers=tuple(range(n_layers)), memory=True)


class EngineWorker(QObject):
    # outputs (emitted in the worker thread, delivered queued to GUI slots)
    loaded = Signal(object)  # dict of model facts
    load_progress = Signal(int, int)  # done bytes, total bytes
    load_failed = Signal(str)
    step = Signal(object)  # StepRecord
    finished = Signal(object)  # RequestDone
    failed = Signal(str)
    prompt_tokens = Signal(object)  # the prompt's tokens as text, for attention axes
    # inputs (queued into the worker thread)
    _load = Signal(str, object)
    _generate = Signal(object, object)

    def __init__(self):
        super().__init__()
        self.engine = None
        self.last_prompt_ids: list[int] = []
        self.speculative = SpeculativeOptions()  # set from the GUI thread (an immutable value: no lock needed)
        self._cancel = threading.Event()
        self._load.connect(self._do_load)
        self._generate.connect(self._do_generate)

    # -- called from the GUI thread -----------------------------------------------------------
    def request_load(self, path: str | None, options) -> None:
        self._cancel.clear()
        self._load.emit(path or "", options)

    def request_generate(self, messages: list[dict], params: SamplingParams) -> None:
        self._cancel.clear()
        self._generate.emit(messages, params)

    def request_cancel(self) -> None:
        self._cancel.set()

    # -- worker thread ------------------------------------------------------------------------

    def _do_load(self, path: str, options) -> None:
        from engine.engine import Engine

        def progress(done, total, done_bytes, total_bytes):
            if self._cancel.is_set():
                raise EngineError("loading was cancelled")
            self.load_progress.emit(done_bytes, total_bytes)

        try:
            if path == BUILTIN_MOE_PATH:
                path = str(self._builtin_moe())
            engine = Engine.load(path or None, options, progress=progress)
        except EngineError as e:
            self.load_failed.emit(str(e))
            return
        except Exception as e:  # a bug, or memory: report it, keep the app alive
            self.load_failed.emit(f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return
        self.engine = engine
        self.loaded.emit(model_facts(engine))


    def _builtin_moe(self):
        """The MoEfied default model from the user's cache; built on first use (a few minutes on
        2 cores) with progress per stage and the same cancel as loading."""
        from PySide6.QtCore import QStandardPaths

        from engine.moefy.build import ensure_builtin_moe

        def progress(stage, done, total):
            if self._cancel.is_set():
                raise EngineError("building the MoE model was cancelled")
            self.load_progress.emit(done, total)

        cache = Path(QStandardPaths.writableLocation(QStandardPaths.CacheLocation) or Path.home() / ".cache" / "glassbox")
        return ensure_builtin_moe(cache / "models", progress)

    def _do_generate(self, messages, params) -> None:
        engine = self.engine
        if engine is None:
            self.failed.emit("no model is loaded")
            return
        try:
            request = engine.make_request(messages, params, instrument=default_instrumentation(engine.config.n_layers),
                                          speculative=self.speculative)
        except EngineError as e:
            self.failed.emit(str(e))
            return
        self.last_prompt_ids = list(request.prompt_ids)  # read by the GUI after the turn (for forks)
        try:
            for item in engine.stream(request, self._cancel):
                if isinstance(item, PromptRecord):
                    self.prompt_tokens.emit(list(item.token_texts))
                elif isinstance(item, StepRecord):
                    self.step.emit(item)
                elif isinstance(item, RequestDone):
                    self.finished.emit(item)
        except Exception as e:  # the engine cleans up its own blocks on errors it knows; report the rest
            self.failed.emit(f"{type(e).__name__}: {e}")
            traceback.print_exc()


def model_facts(engine) -> dict:
    c = engine.config
    quantized = {id(w): w for m in engine.model.modules() for w in getattr(m, "quant_weights", lambda: [])()}
    params = sum(p.numel() for p in engine.model.parameters()) + sum(
        w.shape[0] * w.shape[1] for w in quantized.values())  # packed weights are not Parameters
    weights = engine.model.weight_bytes()
    return {"name": engine.source.name, "path": str(engine.source), "architecture": c.arch,
            "parameters": params, "layers": c.n_layers, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim, "experts": c.moe.n_experts if c.moe else 0,
            "experts_per_token": c.moe.n_experts_per_tok if c.moe else 0, "context": c.max_seq_len,
            "dtype": str(engine.model.embed.weight.dtype).removeprefix("torch."), "device": str(engine.device),
            "rope": c.rope_scaling.rope_type, "vocab": c.vocab_size,
            "weights": " + ".join(f"{kind} {n / 1e6:.1f} MB" for kind, n in sorted(weights.items(), key=lambda kv: -kv[1])
                                  if n > 0)}
