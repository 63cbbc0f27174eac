"""Which model is loaded: load requests with typed options (LoadOptions), the loaded model's facts
(ModelFacts) to the panels that size themselves by it or offer what it supports (tools), load failures,
and the status line (what is loaded, then each reply's speed, and failures that must not be missed).
GUI thread only."""
from __future__ import annotations

from PySide6.QtCore import QObject, QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel, QMessageBox

from engine.records import LoadOptions, ModelFacts, RequestDone


class ElidedLabel(QLabel):
    """A one-line label that asks for its whole text but settles for a few characters, eliding the rest:
    a long speed line must never make the status bar, and with it the window, wider. Full text as tooltip."""

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance("first token…"), super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        text = self.fontMetrics().elidedText(self.text(), Qt.ElideRight, self.contentsRect().width())
        painter.drawText(self.contentsRect(), int(self.alignment()), text)


class ModelController(QObject):
    def __init__(self, window, worker, settings):
        super().__init__(window)
        self.worker, self.settings = worker, settings
        self.facts: ModelFacts | None = None  # the model the worker holds now
        self.perf = ElidedLabel("no model")
        window.statusBar().addPermanentWidget(self.perf)

    @property
    def window(self):
        """The window, as Qt's parent: kept as a Python attribute it would make a reference cycle, and the
        window would be destroyed by the garbage collector, in whichever thread it runs (see main_window)."""
        return self.parent()

    @property
    def name(self) -> str:
        return self.facts.name if self.facts is not None else ""

    def load(self, path: str | None, options: LoadOptions) -> None:
        self.window.statusBar().showMessage(f"Loading {path or 'the default model'}…")
        self.window.chat.set_busy(True)
        self.worker.request_load(path, options)

    # -- from the worker (queued, GUI thread) -------------------------------------------------
    def on_loaded(self, facts: ModelFacts) -> None:
        w = self.window
        self.facts = facts
        w.model_panel.show_model_info(facts)
        w.routing.set_model_info(facts.layers, facts.experts, facts.experts_per_token)
        w.routing.set_expert_groups(facts.expert_groups, facts.expert_groups_kept)
        w.attention.set_model_info(facts.layers, facts.heads, facts.kv_heads)
        w.attention.set_layer_windows(facts.sliding_windows)
        w.sampler.set_tools_available(facts.supports_tools, facts.name)
        self.settings.add_recent_model(facts.path)
        w.model_panel.set_recent(self.settings.recent_models())
        w.chat.set_busy(False)
        w.statusBar().showMessage(f"Loaded {facts.name} ({facts.architecture}, {facts.device}, {facts.dtype}; "
                                  f"weights {facts.weights or '?'})", 5000)
        self.perf.setText(f"{facts.name} ready")

    def on_load_failed(self, message: str) -> None:
        self.window.chat.set_busy(self.facts is None)  # the previous model, if any, still answers
        self.window.model_panel.load_finished()
        self.window.statusBar().showMessage("Loading failed", 5000)
        QMessageBox.critical(self.window, "Could not load the model", message)

    def on_finished(self, done: RequestDone) -> None:
        n = len(done.results[0].token_ids) if done.results else 0
        decode = (n - 1) / (done.decode_ms / 1000) if done.decode_ms > 0 and n > 1 else 0.0
        computed = done.prompt_tokens - done.cached_prompt_tokens
        prefill = computed / (done.prefill_ms / 1000) if done.prefill_ms > 0 else 0.0
        self.perf.setText(f"first token {done.prefill_ms:.0f} ms · prefill {prefill:.0f} tok/s "
                          f"({computed} computed, {done.cached_prompt_tokens} cached) · decode {decode:.1f} tok/s")
        if done.error:  # context full, out of KV blocks: say it where it cannot be missed
            self.on_failed(done.error)

    def on_failed(self, message: str) -> None:
        # The chat says why inline, where the message went back to the input box; a modal box on top said
        # it twice and had to be clicked away (review of issue 20). The status line keeps it a while.
        self.window.statusBar().showMessage(f"Not sent: {message}", 10_000)
