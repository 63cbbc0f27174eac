"""The main window: docks the panels around the chat and wires them, the worker thread and the
GUI-thread objects that each own one concern: app/chat_controller.py (the conversation),
app/record_hub.py (records to the panels), app/model_controller.py (the loaded model and the status
line), app/session_autosave.py (autosave and restore), app/dock_layout.py (where the panels sit, the
window's size). Only the worker talks to the engine."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QThread
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox

from app import dock_layout
from app.adapters import Adapters
from app.autosave import default_folder
from app import help as help_sheet
from app.chat_controller import ChatController
from app.context_meter import ContextMeter
from app.conversations import Conversations
from app.engine_worker import EngineWorker
from app.inspections import Inspections
from app.model_controller import ModelController
from app.record_hub import RecordHub
from app.serving import Serving
from app.session_autosave import SessionAutosave
from app.settings import Settings
from engine.records import LoadOptions
from widgets.adapter_panel import AdapterPanel
from widgets.attention_panel import AttentionPanel
from widgets.chat import ChatPanel
from widgets.drift_panel import QuantDriftPanel
from widgets.intervention_panel import InterventionPanel
from widgets.lens_panel import LogitLensPanel
from widgets.memory_panel import MemoryPanel
from widgets.model_panel import ModelPanel
from widgets.probabilities_panel import ProbabilitiesPanel
from widgets.rope_panel import RopePanel
from widgets.routing_panel import RoutingPanel
from widgets.sampler_panel import SamplerPanel
from widgets.template_panel import TemplatePanel


def turn_options(sampler, template_panel) -> dict:
    """What the next turn asks beyond the sampler's values (app/turn.py's Turn fields): the chat format
    (mode, template, overflow) and samples, best-of, beams."""
    return {**template_panel.options(), **sampler.request_shape()}


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, model_path: str | None = None, autoload: bool = True,
                 data_dir=None, offer_restore: bool = True):
        super().__init__()
        self.setWindowTitle("Glassbox")
        self.settings = settings or Settings()
        self._setup_panels()
        self.thread = QThread(self)
        self.worker = EngineWorker()
        self.worker.moveToThread(self.thread)
        self.thread.start()
        sampler, template = self.sampler, self.template_panel  # captured, not the window (a cycle through it)
        self.controller = ChatController(self.chat, self.worker, self.sampler.params,
                                         lambda: turn_options(sampler, template))
        self.hub = RecordHub(self.worker, self.controller, self.sampler.params, self.routing, self.attention,
                             self.memory)
        self.inspections = Inspections(self.worker, self.hub.contexts, self.lens, self.what_if, self.drift,
                                       self.rope, self.model_panel.rope_spec, self, adapters=self.adapter_panel)
        self.adapters = Adapters(self, self.worker, self.adapter_panel, self.inspections.adapters)
        self.hub.inspections = self.inspections
        self.serving = Serving(self, self.worker, self.hub, self.settings)  # Server menu, Requests dock
        # Parts that need the window get it as their Qt parent, never as a Python attribute: a reference
        # cycle through the window would leave destroying it to the garbage collector, which runs in
        # whichever thread allocates (the worker's, where destroying widgets deadlocks).
        self.models = ModelController(self, self.worker, self.settings)
        models = self.models  # captured instead of the window: a lambda holding the window would make a cycle
        self.meter = ContextMeter(self.worker, self.controller, self.chat, self.template_panel,
                                  lambda: models.facts.context if models.facts else 0, self)
        self.conversations = Conversations(self, self.controller, lambda: models.name,
                                           (Path(data_dir) / "conversations") if data_dir else None)
        # Shown while interventions kept on change what the model generates (never silently).
        self.intervention_note = QLabel()
        self.intervention_note.setStyleSheet("color: white; background: #b03a2e; padding: 1px 6px; border-radius: 3px;")
        self.intervention_note.setMaximumWidth(420)  # a long list must not widen the window
        self.intervention_note.hide()
        self.statusBar().addPermanentWidget(self.intervention_note)
        self._setup_menus()
        self._shown_once = False
        geometry, self._layout_restored = self.settings.restore_window(self, dock_layout.LAYOUT_VERSION)
        if not geometry:
            dock_layout.fit_first_start(self)  # no saved geometry: fit the screen the window opens on
        notices = [self.settings.notice] if self.settings.notice else []
        self.session = SessionAutosave(self, self.controller, self.models, data_dir or default_folder(),
                                       offer_restore, notices)
        self._wire()
        if autoload:
            self.load_model(model_path, LoadOptions(threads=0))  # one matmul thread per physical core

    def _setup_panels(self) -> None:
        self.chat = ChatPanel()
        self.setCentralWidget(self.chat)
        self.sampler = SamplerPanel()
        # Presets first, then the values, then which preset is active: "(modified)" compares the two.
        self.sampler.presets.set_user_presets(self.settings.user_presets())
        self.sampler.set_params(self.settings.sampling())
        self.sampler.set_request_shape(self.settings.request_shape())
        self.sampler.presets.set_active(self.settings.active_preset())
        self.probabilities = ProbabilitiesPanel()
        self.routing = RoutingPanel()
        self.attention = AttentionPanel()
        self.memory = MemoryPanel()
        self.lens = LogitLensPanel()
        self.what_if = InterventionPanel()
        self.drift = QuantDriftPanel()
        self.rope = RopePanel()
        self.adapter_panel = AdapterPanel()  # LoRA adapters, and the selected token without and with them
        self.model_panel = ModelPanel()
        self.template_panel = TemplatePanel()  # the chat format: mode, template, overflow; under the model
        self.template_panel.restore(self.settings.template_state())
        model_side = dock_layout.Stacked(self.model_panel, self.template_panel)
        self.model_panel.set_recent(self.settings.recent_models())
        self.docks = dock_layout.make_docks(self, {
            "Model": model_side, "Sampler": self.sampler, "RoPE": self.rope, "Memory": self.memory,
            "Probabilities": self.probabilities, "Logit lens": self.lens, "What-if": self.what_if,
            "Attention": self.attention, "Routing": self.routing, "Quant drift": self.drift,
            "LoRA": self.adapter_panel})

    def _wire(self) -> None:
        w, c, hub, models, session = self.worker, self.controller, self.hub, self.models, self.session
        # Worker signals reach slots of GUI-thread QObjects only, so they run queued in the GUI thread
        # (a lambda would run in the worker's). Qt calls one signal's slots in the order connected:
        # the last steps reach the panels, then the turn ends, then it is saved.
        w.loaded.connect(models.on_loaded)
        w.loaded.connect(self.inspections.model_loaded)
        w.loaded.connect(self.adapters.model_loaded)
        w.load_failed.connect(models.on_load_failed)
        w.load_progress.connect(self.model_panel.show_progress)
        w.turn_started.connect(c.on_turn_started)
        w.turn_started.connect(hub.on_turn_started)
        w.steps.connect(hub.on_steps)
        w.tool_calls.connect(c.on_tool_calls)
        w.finished.connect(hub.flush)
        w.finished.connect(c.on_finished)
        w.finished.connect(session.save)
        w.finished.connect(models.on_finished)
        w.failed.connect(c.on_failed)
        w.failed.connect(models.on_failed)
        w.distribution.connect(self.probabilities.show_distribution)
        c.step_selected.connect(hub.select)
        self.chat.submitted.connect(session.save)  # after the controller took the message
        c.changed.connect(session.save)  # an edit, a deletion, a branch switch, a new title
        self.chat.submitted.connect(self.inspections.new_turn)
        self.model_panel.rope_changed.connect(self.inspections.rope_changed)
        self.what_if.changed.connect(self._show_interventions)
        self.what_if.keep_changed.connect(self._show_interventions)
        self.sampler.params_changed.connect(self.settings.set_sampling)
        self.sampler.presets.user_presets_changed.connect(self.settings.set_user_presets)
        self.sampler.presets.active_changed.connect(self.settings.set_active_preset)
        self.sampler.shape_changed.connect(self.settings.set_request_shape)
        w.finished.connect(self.conversations.save)  # the library's copy of this conversation, after the autosave
        c.changed.connect(self.conversations.save)
        w.template.connect(self.template_panel.set_model_template)
        w.builtin_templates.connect(self.template_panel.set_builtin_templates)
        w.count_failed.connect(self.template_panel.show_problem)
        self.template_panel.options_changed.connect(self._save_template_state)
        for changed in (w.loaded, w.finished, c.changed, self.chat.clear_requested,
                        self.template_panel.options_changed):
            changed.connect(self.meter.count_used)
        self.sampler.params_changed.connect(hub.show_distribution)  # re-derived from stored logits
        # GUI signals reach the worker through its request_* methods, called here in the GUI thread
        # (connected to the worker's own methods they would run queued in its thread, which is busy
        # while a model loads, so Cancel would wait for the load it should stop).
        self.sampler.speculative_changed.connect(lambda options: w.request_speculative(options))
        self.model_panel.cancel_requested.connect(lambda: w.request_cancel())
        self.sampler.tools_changed.connect(c.offer_tools)
        self.probabilities.alternative_chosen.connect(hub.continue_with)
        self.model_panel.open_requested.connect(self.load_model)

    def _add_adapter(self) -> None:
        dock_layout.open_dock(self, "LoRA")
        self.adapter_panel.choose_folder()

    def _show_shortcuts(self) -> None:
        help_sheet.show_shortcuts(self)

    def _show_about(self) -> None:
        help_sheet.show_about(self, self.models.facts)

    def _save_template_state(self, *_) -> None:
        self.settings.set_template_state(self.template_panel.state())

    def _show_interventions(self, *_) -> None:
        """Interventions kept on change what the model generates: the status line says so while they do."""
        kept = self.what_if.interventions() if self.what_if.keep_on() else ()
        text = "Intervention active: " + ", ".join(i.label for i in kept) if kept else ""
        self.intervention_note.setText(text)
        self.intervention_note.setToolTip(text)
        self.intervention_note.setVisible(bool(kept))

    def _setup_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction("&Open model file…", self.model_panel.choose_model, "Ctrl+O")
        file_menu.addAction("Open model &folder…", self.model_panel.choose_folder)
        file_menu.addAction("Add LoRA &adapter…", self._add_adapter)
        file_menu.addSeparator()
        file_menu.addAction("&New conversation", self.conversations.new, "Ctrl+N")
        file_menu.addAction("Conve&rsations…", self.conversations.show, "Ctrl+Shift+L")
        file_menu.addAction("Open &conversation…", self._open_conversation)
        file_menu.addAction("&Save conversation…", lambda: self._save_conversation(False), "Ctrl+S")
        file_menu.addAction("&Export with per-token records…", lambda: self._save_conversation(True))
        file_menu.addSeparator()
        file_menu.addAction("&Quit", self.close, "Ctrl+Q")
        view = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        view.addAction("&Reset layout", self.reset_layout)
        view.addSeparator()
        dark = view.addAction("&Dark theme (restart to recolour plots)")
        dark.setCheckable(True)
        dark.setChecked(self.settings.dark_theme())
        dark.toggled.connect(self._set_dark)
        self.serving.add_menu(self.menuBar(), view)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction("&Keyboard shortcuts", self._show_shortcuts, "F1")
        help_menu.addAction("&About Glassbox", self._show_about)

    def reset_layout(self) -> None:
        """View → Reset layout: every panel back where it starts, docked, shown and at its default width."""
        dock_layout.arrange(self, self.docks)
        if self.adapter_panel.adapter_names():  # in use: it stays open
            self.docks["LoRA"].show()

    def load_model(self, path: str | None, options: LoadOptions) -> None:
        self.models.load(path, options)

    def _save_conversation(self, with_records: bool) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save conversation", "conversation.json", "JSON (*.json)")
        if path:
            self.controller.save(path, with_records, self.models.name)

    def _open_conversation(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open conversation", "", "JSON (*.json)")
        if path:
            try:
                self.controller.open(path)
            except ValueError as e:
                QMessageBox.warning(self, "Could not open the conversation", str(e))

    def _set_dark(self, dark: bool) -> None:
        from PySide6.QtWidgets import QApplication

        from app.theme import apply_theme

        self.settings.set_dark_theme(dark)
        apply_theme(QApplication.instance(), dark)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._shown_once:  # a size asked for by a caller or saved on a larger screen: fit this one
            self._shown_once = True
            dock_layout.keep_on_screen(self)
            dock_layout.whole_tab_titles(self)  # tab bars restored from a saved layout too
            if not self._layout_restored:  # the default docks' widths, for the size the window has now
                dock_layout.size_docks(self, self.docks)

    def closeEvent(self, event) -> None:
        self.settings.save_window(self, dock_layout.LAYOUT_VERSION)
        self.settings.set_sampling(self.sampler.params())
        self.settings.sync()
        self.serving.stop()  # before the worker's thread: stopping cancels the served requests there
        self.worker.request_cancel()
        self.thread.quit()
        self.thread.wait(5000)
        self.session.close()
        super().closeEvent(event)
