"""LoRA adapters in the window: the adapter panel's add / switch / scale / remove become jobs the worker
runs between two steps (EngineWorker.run: only the worker calls the engine), the engine's answer (every
adapter as it holds them now, or why it refused) comes back to the panel and the status line, and the
selected token's comparison is asked again (app/inspections.py AdapterInspection). A switch applies from the
next step of whatever is generating. GUI thread, except `_answer`, which the worker thread calls."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel

from app import dock_layout
from engine.errors import EngineError


class Adapters(QObject):
    # (the job's number, the engine's AdapterFacts tuple or None on failure, a problem or ""): jobs run in order,
    # but their answers may arrive out of order (a Future's callback runs where it is attached if the job
    # already finished), so an answer older than the one shown is dropped.
    answered = Signal(int, object, str)

    def __init__(self, window, worker, panel, inspection):
        super().__init__(window)
        self.worker, self.panel, self.inspection = worker, panel, inspection
        self.asked = self.shown = 0  # the latest job's number, and the number of the answer on show
        # Shown while adapters change what the model generates (never silently), as the interventions are.
        self.note = QLabel()
        self.note.setStyleSheet("color: white; background: #1f618d; padding: 1px 6px; border-radius: 3px;")
        self.note.setMaximumWidth(320)
        self.note.hide()
        window.statusBar().addPermanentWidget(self.note)
        panel.add_requested.connect(self.add)
        panel.adapter_changed.connect(self.change)
        panel.remove_requested.connect(self.remove)
        self.answered.connect(self._show)  # emitted in the worker's thread: delivered queued, here

    def add(self, folder: str) -> None:
        self.panel.show_computing()
        self._ask(lambda engine: engine.add_adapter(folder))

    def change(self, name: str, enabled: bool, scale: float) -> None:
        self._ask(lambda engine: engine.set_adapter(name, enabled=enabled, scale=scale))

    def remove(self, name: str) -> None:
        self._ask(lambda engine: engine.remove_adapter(name))

    def model_loaded(self, facts) -> None:
        """A new model: the old one's adapters went with it; the engine says which it has (LoadOptions.adapters)."""
        self.panel.set_model_loaded(True)
        self._ask(lambda engine: None)

    # -- the worker's answer ------------------------------------------------------------------
    def _ask(self, change) -> None:
        def job(engine):
            change(engine)
            return engine.adapters()

        self.asked += 1
        number = self.asked
        self.worker.run(job).add_done_callback(lambda future: self._answer(number, future))

    def _answer(self, number: int, future) -> None:
        """Worker thread (or here, when the job had finished already): hand over through the signal."""
        try:
            self.answered.emit(number, future.result(), "")
        except (EngineError, ValueError) as e:
            self.answered.emit(number, None, str(e))
        except Exception as e:  # a bug: say it in the panel, keep the window alive
            self.answered.emit(number, None, f"{type(e).__name__}: {e}")

    def _show(self, number: int, adapters, problem: str) -> None:
        if number < self.shown:
            return
        self.shown = number
        if problem:
            self.panel.show_problem(f"Adapter not changed: {problem}")
            return
        self.panel.set_adapters(adapters)
        self._show_note(adapters)
        if adapters:  # the dock starts closed (app/dock_layout.py HIDDEN_AT_START): open it where it is used
            dock_layout.open_dock(self.parent(), "LoRA")
        self.inspection.forget()  # the same token under other adapters is another comparison
        if self.inspection.wanted() is None:
            self.panel.clear_result()  # none on, or nothing selected yet: say what to do
        self.inspection.refresh()

    def _show_note(self, adapters) -> None:
        on = [a.label for a in adapters if a.enabled]
        text = "LoRA: " + ", ".join(on) if on else ""
        self.note.setText(text)
        self.note.setToolTip(text)
        self.note.setVisible(bool(on))
