"""The main window: docks the panels around the chat, wires them to the worker thread, and redraws
the panels from the latest records on a ~30 Hz timer (so fast decoding cannot flood the GUI)."""
from __future__ import annotations

import dataclasses
import os
import time

from PySide6.QtCore import Qt, QThread, QTimer
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox

from app.autosave import Autosave, default_folder
from app.chat_controller import ChatController
from app.engine_worker import EngineWorker
from app.settings import Settings
from engine.engine import LoadOptions
from engine.records import RequestDone, StepRecord
from engine.instrumentation.distribution import distribution_view
from widgets.attention_panel import AttentionPanel
from widgets.chat_panel import ChatPanel
from widgets.memory_panel import MemoryPanel
from widgets.model_panel import ModelPanel
from widgets.probabilities_panel import ProbabilitiesPanel
from widgets.routing_panel import RoutingPanel
from widgets.sampler_panel import SamplerPanel

REDRAW_MS = 33
# While a reply streams, its text so far is autosaved this often (a kill loses at most this much of it).
AUTOSAVE_SECONDS = float(os.environ.get("GLASSBOX_AUTOSAVE_SECONDS", "3"))


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, model_path: str | None = None, autoload: bool = True,
                 data_dir=None, offer_restore: bool = True):
        super().__init__()
        self.setWindowTitle("Glassbox")
        self.settings = settings or Settings()
        self.selected: StepRecord | None = None
        self.token_texts = None
        self._pending: list[StepRecord] = []
        self._setup_panels()
        self._setup_worker()
        self._setup_menus()
        self.settings.restore_window(self)
        self.redraw = QTimer(self, interval=REDRAW_MS, timeout=self._flush)
        self.redraw.start()
        self.autosaver = Autosave(data_dir or default_folder())
        self._saved_steps = 0  # steps of the streaming reply already in the autosave
        self.autosave_timer = QTimer(self, interval=int(AUTOSAVE_SECONDS * 1000), timeout=self._autosave_partial)
        self.autosave_timer.start()
        self.chat.submitted.connect(lambda _text: self.autosave())  # runs after the controller took the message
        self.notices = [self.settings.notice] if self.settings.notice else []
        self.restore_offer = None
        if offer_restore:
            snapshot, notices = self.autosaver.take_unsaved()
            self.notices += notices
            if snapshot is not None:
                self._offer_restore(snapshot)
        if self.notices:
            self._show_notices()
        if autoload:
            self.load_model(model_path, {})

    # -- construction -------------------------------------------------------------------------
    def _setup_panels(self) -> None:
        self.chat = ChatPanel()
        self.setCentralWidget(self.chat)
        self.sampler = SamplerPanel()
        self.sampler.set_params(self.settings.sampling())
        self.probabilities = ProbabilitiesPanel()
        self.routing = RoutingPanel()
        self.attention = AttentionPanel()
        self.memory = MemoryPanel()
        self.model_panel = ModelPanel()
        self.model_panel.set_recent(self.settings.recent_models())
        self.docks = {}
        for name, widget, area in [("Model", self.model_panel, Qt.LeftDockWidgetArea),
                                   ("Sampler", self.sampler, Qt.LeftDockWidgetArea),
                                   ("Token probabilities", self.probabilities, Qt.RightDockWidgetArea),
                                   ("Expert routing", self.routing, Qt.RightDockWidgetArea),
                                   ("Attention", self.attention, Qt.RightDockWidgetArea),
                                   ("Memory", self.memory, Qt.BottomDockWidgetArea)]:
            dock = QDockWidget(name, self)
            dock.setObjectName(name)  # lets saveState/restoreState find it again
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.tabifyDockWidget(self.docks["Token probabilities"], self.docks["Expert routing"])
        self.tabifyDockWidget(self.docks["Expert routing"], self.docks["Attention"])
        self.docks["Token probabilities"].raise_()
        self.perf = QLabel("no model")
        self.statusBar().addPermanentWidget(self.perf)

    def _setup_worker(self) -> None:
        self.thread = QThread(self)
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self.controller = ChatController(self.chat, self.worker, self.sampler.params)
        # Worker signals go to methods of GUI-thread objects only (so they run in the GUI thread).
        self.worker.step.connect(self._on_step)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self.controller.on_failed)
        self.worker.failed.connect(self._on_generation_failed)
        self.worker.loaded.connect(self._on_loaded)
        self.worker.load_failed.connect(self._on_load_failed)
        self.worker.load_progress.connect(self.model_panel.show_progress)
        self.worker.prompt_tokens.connect(self._on_prompt_tokens)
        self.controller.step_selected.connect(self._select_step)
        self.sampler.params_changed.connect(self._on_params_changed)
        self.sampler.speculative_changed.connect(lambda spec: setattr(self.worker, "speculative", spec))
        self.sampler.tools_changed.connect(self.controller.offer_tools)
        self.probabilities.alternative_chosen.connect(
            lambda token: self.selected is not None and self.controller.continue_with(self.selected, token))
        self.model_panel.open_requested.connect(self.load_model)
        self.model_panel.cancel_requested.connect(self.worker.request_cancel)

    def _setup_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction("&Open model…", self.model_panel.choose_model, "Ctrl+O")
        file_menu.addSeparator()
        file_menu.addAction("Open &conversation…", self._open_conversation)
        file_menu.addAction("&Save conversation…", lambda: self._save_conversation(False), "Ctrl+S")
        file_menu.addAction("&Export with per-token records…", lambda: self._save_conversation(True))
        file_menu.addSeparator()
        file_menu.addAction("&Quit", self.close, "Ctrl+Q")
        view = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        dark = view.addAction("&Dark theme (restart to recolour plots)")
        dark.setCheckable(True)
        dark.setChecked(self.settings.dark_theme())
        dark.toggled.connect(self._set_dark)

    # -- actions ------------------------------------------------------------------------------
    def _save_conversation(self, with_records: bool) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save conversation", "conversation.json", "JSON (*.json)")
        if path:
            self.controller.save(path, with_records, getattr(self, "facts", {}).get("name", ""))

    def _open_conversation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open conversation", "", "JSON (*.json)")
        if path:
            try:
                self.controller.open(path)
            except ValueError as e:
                QMessageBox.warning(self, "Could not open the conversation", str(e))

    # -- autosave and restore (app/autosave.py) ------------------------------------------------
    def autosave(self) -> None:
        """After every turn (and the user's message): the conversation survives a crash or a kill."""
        partial = ""
        if self.controller.busy:  # the reply streaming now, as far as it has come
            turn = self.controller.steps[self.controller.turn_start:]
            partial = self.controller.branch_prefix + "".join(s.text for s in turn)
            self._saved_steps = len(self.controller.steps)
        self.autosaver.save(self.chat.system.text(), self.controller.messages, partial,
                            getattr(self, "facts", {}).get("name", ""))
        if self.autosaver.error:  # the previous write failed: a full or read-only disk
            self.statusBar().showMessage(f"Autosave failed: {self.autosaver.error}", 10_000)

    def _autosave_partial(self) -> None:
        if self.controller.busy and len(self.controller.steps) > self._saved_steps:
            self.autosave()

    def _offer_restore(self, snapshot) -> None:
        """Non-modal, so it neither blocks the start nor a self-test that watches for modal dialogs."""
        turns = sum(m["role"] == "user" for m in snapshot.messages)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(snapshot.saved_at))
        cut = " Its last reply was cut short." if snapshot.partial else ""
        box = QMessageBox(QMessageBox.Question, "Restore the last conversation?",
                          f"Glassbox found a conversation of {turns} turn(s) that was not closed properly "
                          f"(saved {when}).{cut} Restore it?", QMessageBox.NoButton, self)
        box.restore_button = box.addButton("Restore", QMessageBox.AcceptRole)
        box.discard_button = box.addButton("Discard", QMessageBox.RejectRole)
        box.setModal(False)
        box.buttonClicked.connect(lambda button: self._restore(snapshot, button is box.restore_button))
        self.restore_offer = box
        box.show()

    def _restore(self, snapshot, accepted: bool) -> None:
        self.restore_offer = None
        if accepted and not self.controller.busy:
            self.controller.open(snapshot.path)
            if snapshot.partial:  # kept like a stopped reply: the user sees (and the model gets) what was there
                self.controller.messages.append({"role": "assistant", "content": snapshot.partial})
                self.chat.add_assistant_text(snapshot.partial + " … [interrupted]")
            self.statusBar().showMessage("Conversation restored", 5000)
            self.autosave()
        self.autosaver.forget(snapshot)

    def _show_notices(self) -> None:
        self.statusBar().showMessage(self.notices[-1], 30_000)
        box = QMessageBox(QMessageBox.Warning, "Glassbox started with defaults", "\n\n".join(self.notices),
                          QMessageBox.Ok, self)
        box.setModal(False)
        self.notice_box = box
        box.show()

    def _set_dark(self, dark: bool) -> None:
        from PySide6.QtWidgets import QApplication

        from app.theme import apply_theme

        self.settings.set_dark_theme(dark)
        apply_theme(QApplication.instance(), dark)

    def load_model(self, path: str | None, options: dict) -> None:
        fields = {f.name for f in dataclasses.fields(LoadOptions)}
        load_options = LoadOptions(**{k: v for k, v in options.items() if k in fields})
        self.statusBar().showMessage(f"Loading {path or 'the default model'}…")
        self.chat.set_busy(True)
        self.worker.request_load(path, load_options)

    # -- worker events (GUI thread) -----------------------------------------------------------
    def _on_loaded(self, facts: dict) -> None:
        self.facts = facts
        self.model_panel.show_model_info(facts)
        self.routing.set_model_info(facts["layers"], facts["experts"], facts["experts_per_token"])
        self.attention.set_model_info(facts["layers"], facts["heads"], facts["kv_heads"])
        self.settings.add_recent_model(facts["path"])
        self.model_panel.set_recent(self.settings.recent_models())
        self.chat.set_busy(False)
        self.statusBar().showMessage(f"Loaded {facts['name']} ({facts['architecture']}, {facts['device']}, "
                                     f"{facts['dtype']}; weights {facts.get('weights', '?')})", 5000)
        self.perf.setText(f"{facts['name']} ready")

    def _on_load_failed(self, message: str) -> None:
        self.chat.set_busy(self.worker.engine is None)  # the previous model, if any, still answers
        self.model_panel.load_finished()
        self.statusBar().showMessage("Loading failed", 5000)
        QMessageBox.critical(self, "Could not load the model", message)

    def _on_generation_failed(self, message: str) -> None:
        QMessageBox.warning(self, "Generation failed", f"{message}\n\nThe conversation is kept.")

    def _on_prompt_tokens(self, texts) -> None:
        self.token_texts = list(texts)
        self.routing.clear()
        self.attention.clear()
        self.attention.set_token_labels(self.token_texts)

    def _on_step(self, record: StepRecord) -> None:
        self._pending.append(record)

    def _on_finished(self, done: RequestDone) -> None:
        self._flush()
        self.controller.on_finished(done)
        self.autosave()
        if done.error:  # context full, out of KV blocks: say it where it cannot be missed
            self._on_generation_failed(done.error)
        n = len(done.results[0].token_ids) if done.results else 0
        decode = (n - 1) / (done.decode_ms / 1000) if done.decode_ms > 0 and n > 1 else 0.0
        computed = done.prompt_tokens - done.cached_prompt_tokens
        prefill = computed / (done.prefill_ms / 1000) if done.prefill_ms > 0 else 0.0
        self.perf.setText(f"first token {done.prefill_ms:.0f} ms · prefill {prefill:.0f} tok/s "
                          f"({computed} computed, {done.cached_prompt_tokens} cached) · decode {decode:.1f} tok/s")

    def _flush(self) -> None:
        """Timer tick: hand everything that arrived since the last tick to the panels, once."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        self.controller.on_steps(records)
        for r in records:
            self.routing.add_step(r)
            self.attention.add_step(r)
            if self.token_texts is not None:
                self.token_texts.append(r.text)
        self.attention.set_token_labels(self.token_texts or [])
        last = records[-1]
        if last.memory is not None:
            self.memory.show_memory(last.memory)
        self._select_step(last)

    def _select_step(self, record: StepRecord) -> None:
        self.selected = record
        self._show_distribution()

    def _on_params_changed(self, params) -> None:
        self.settings.set_sampling(params)
        self._show_distribution()  # re-derived from the stored logits: no forward pass

    def _show_distribution(self) -> None:
        if self.selected is None or not self.selected.logit_ids:
            return
        view = distribution_view(self.selected, self.sampler.params(), self._token_text, top_n=12)
        self.probabilities.show_distribution(view)

    def _token_text(self, token_id: int) -> str:
        engine = self.worker.engine
        return engine.tokenizer.token_text(token_id) if engine is not None else str(token_id)

    # -- lifetime -----------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        self.settings.save_window(self)
        self.settings.set_sampling(self.sampler.params())
        self.settings.sync()
        self.worker.request_cancel()
        self.thread.quit()
        self.thread.wait(5000)
        self.autosave_timer.stop()
        self.autosaver.close()  # the queued saves reach the disk
        super().closeEvent(event)
