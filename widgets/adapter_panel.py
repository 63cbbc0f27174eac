"""LoRA adapters: the loaded adapters, each switched on or off and scaled live, Add adapter… (a PEFT folder)
and Remove; and for the selected token its next-token distribution without and with the adapters, paired
bars per token, with the KL and whether the top-1 changed. Draws AdapterFacts and AdapterComparisonView
records only; the app asks the engine (through its worker) and hands them here."""
from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QFileDialog, QGridLayout, QHBoxLayout, QLabel, QPushButton,
                               QSlider, QStackedWidget, QToolButton, QVBoxLayout, QWidget)

from engine.records import AdapterComparisonView, AdapterFacts

BASE, ADAPTED = "#95a5a6", "#2e86c1"  # bar colours: without the adapters, with them
ON_STYLE = "background: #1f618d; color: white; padding: 4px; border-radius: 3px; font-weight: bold;"
OFF_STYLE = "padding: 4px; border: 1px solid palette(mid); border-radius: 3px;"
# The bars' key, under the summary: a legend inside the plot covered the lowest rows, where a token the
# adapter lifts from almost nothing (ordered by the base probability) draws its longest bar.
KEY = (f"<span style='color:{BASE}'>■</span> without · <span style='color:{ADAPTED}'>■</span> "
       "with the adapters")
NO_MODEL = "Load a model first: adapters are added onto it."
NO_ADAPTER = "Add a LoRA adapter (a PEFT folder: adapter_config.json + adapter_model.safetensors)."
NO_RESULT = "Switch an adapter on, then select a token in the chat: its next-token distribution is shown " \
            "without and with the adapters."
COMPUTING = "Comparing (the context replayed without and with the adapters)…"
SCALE_MAX, SCALE_STEPS = 2.0, 40  # the slider: 0..2 in steps of 0.05 (the box takes any value in -4..4)
EDIT_PAUSE_MS = 250  # a dragged slider sends its last value only: each change drops the prefix cache


def display_text(text: str) -> str:
    """Make whitespace visible (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class AdapterRow(QWidget):
    """One adapter: on/off with its name, the scale as a slider and a box, remove."""

    def __init__(self, facts: AdapterFacts, parent=None):
        super().__init__(parent)
        self.name = facts.name
        self.enabled = QCheckBox(facts.name, checked=facts.enabled)
        self.enabled.setToolTip(f"{facts.path}\nrank {facts.rank}, alpha {facts.alpha:g}"
                                f"{' (rsLoRA)' if facts.rslora else ''}; {', '.join(facts.targets)} in "
                                f"{len(facts.layers)} layers; {facts.parameters:,} parameters")
        self.slider = QSlider(Qt.Horizontal, minimum=0, maximum=SCALE_STEPS)
        self.scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, singleStep=0.05, decimals=2, value=facts.scale,
                                    toolTip="1: as trained; 0: no effect; the adapter's own alpha/r times this")
        self.slider.setValue(round(min(max(facts.scale, 0), SCALE_MAX) * SCALE_STEPS / SCALE_MAX))
        self.slider.valueChanged.connect(lambda step: self.scale.setValue(step * SCALE_MAX / SCALE_STEPS))
        self.scale.valueChanged.connect(self._sync_slider)
        self.remove = QToolButton(text="✕", toolTip=f"Remove {facts.name}")
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.enabled, 0, 0, 1, 2)
        layout.addWidget(self.remove, 0, 2)
        layout.addWidget(self.slider, 1, 0)
        layout.addWidget(self.scale, 1, 1, 1, 2)
        layout.setColumnStretch(0, 1)

    def show_facts(self, facts: AdapterFacts, edited: bool) -> None:
        """What the engine says now, unless the user is changing it (an edit not sent yet, a drag)."""
        if edited or self.slider.isSliderDown():
            return
        for control in (self.enabled, self.scale):
            control.blockSignals(True)
        self.enabled.setChecked(facts.enabled)
        self.scale.setValue(facts.scale)
        self._sync_slider(facts.scale)
        for control in (self.enabled, self.scale):
            control.blockSignals(False)

    def _sync_slider(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(min(max(value, 0), SCALE_MAX) * SCALE_STEPS / SCALE_MAX))
        self.slider.blockSignals(False)


class AdapterPanel(QWidget):
    add_requested = Signal(str)  # an adapter folder to load
    adapter_changed = Signal(str, bool, float)  # name, enabled, scale
    remove_requested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._rows: dict[str, AdapterRow] = {}
        self._any_enabled = False
        self._view: AdapterComparisonView | None = None
        self._pending: dict[str, tuple[bool, float]] = {}  # edits not yet sent (EDIT_PAUSE_MS)
        self._ticks: list[str] = []
        self._setup_ui()
        self._layout()
        self.set_model_loaded(False)

    def _setup_ui(self) -> None:
        self.banner = QLabel("", wordWrap=True)
        self.add_button = QPushButton("Add adapter…")
        self.add_button.clicked.connect(self.choose_folder)
        self.rows_box = QVBoxLayout()
        self.rows_box.setSpacing(6)
        self.send_timer = QTimer(self, singleShot=True, interval=EDIT_PAUSE_MS)
        self.send_timer.timeout.connect(self._send_pending)
        self.summary = QLabel("", wordWrap=True, textFormat=Qt.RichText)
        self.message = QLabel(NO_RESULT, wordWrap=True, alignment=Qt.AlignCenter)
        self.bars = pg.PlotWidget()
        self.bars.setLabel("bottom", "probability")
        self.bars.getAxis("bottom").enableAutoSIPrefix(False)
        self.bars.setMouseEnabled(False, False)
        self.bars.invertY(True)  # the most likely token on top
        empty = {"x0": np.zeros(0), "y": np.zeros(0), "width": np.zeros(0), "height": 0.38}
        self.base_item = pg.BarGraphItem(**empty, brush=BASE, pen=None, name="without")
        self.adapted_item = pg.BarGraphItem(**empty, brush=ADAPTED, pen=None, name="with the adapters")
        self.bars.addItem(self.base_item)
        self.bars.addItem(self.adapted_item)
        self.bars.getViewBox().sigResized.connect(lambda *_: self._label_ticks())
        self.bars.scene().sigMouseMoved.connect(self._hover)
        self.result = QStackedWidget()
        self.result.addWidget(self.message)
        self.result.addWidget(self.bars)
        self.result.setMinimumHeight(220)

    def _layout(self) -> None:
        top = QHBoxLayout()
        top.addWidget(self.add_button)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addLayout(top)
        layout.addLayout(self.rows_box)
        layout.addWidget(self.summary)
        layout.addWidget(self.result, 1)

    # -- API ----------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a LoRA adapter (a PEFT folder)")
        if path:
            self.add_requested.emit(path)

    def set_model_loaded(self, loaded: bool) -> None:
        """Whether a model is loaded to add adapters onto (its adapters come with set_adapters)."""
        self.add_button.setEnabled(loaded)
        self.add_button.setToolTip("" if loaded else NO_MODEL)
        if not loaded:
            self.set_adapters(())

    def set_adapters(self, adapters: tuple[AdapterFacts, ...]) -> None:
        """The adapters the engine holds now, as it says (after each add, switch, scale or removal). The same
        adapters as shown keep their rows (a slider being dragged is not pulled from under the mouse)."""
        if [f.name for f in adapters] == list(self._rows):
            for facts in adapters:
                self._rows[facts.name].show_facts(facts, edited=facts.name in self._pending)
        else:
            self._pending.clear()
            for row in self._rows.values():
                self.rows_box.removeWidget(row)
                row.deleteLater()
            self._rows = {}
            for facts in adapters:
                row = AdapterRow(facts)
                row.enabled.toggled.connect(lambda _, name=facts.name: self._edited(name))
                row.scale.valueChanged.connect(lambda _, name=facts.name: self._edited(name))
                row.remove.clicked.connect(lambda _=False, name=facts.name: self._remove(name))
                self.rows_box.addWidget(row)
                self._rows[facts.name] = row
        on = [f.label for f in adapters if f.enabled]
        self._any_enabled = bool(on)
        if on:
            them = "them" if len(on) > 1 else "it"
            self.banner.setText("LoRA on: " + " · ".join(on) + f" (the chat generates with {them})")
            self.banner.setStyleSheet(ON_STYLE)
        else:
            self.banner.setText("No adapter on: the model as loaded." if adapters else NO_ADAPTER)
            self.banner.setStyleSheet(OFF_STYLE)
        if not on:
            self.clear_result()

    def any_enabled(self) -> bool:
        """Whether an adapter is on, as the engine last said (set_adapters), not as edits not yet sent say."""
        return self._any_enabled

    def adapter_names(self) -> list[str]:
        return list(self._rows)

    def row(self, name: str) -> AdapterRow:
        return self._rows[name]

    def show_computing(self) -> None:
        self._view = None  # what was shown belongs to another token or other adapters
        self.summary.setText("")
        self.message.setText(COMPUTING)
        self.result.setCurrentWidget(self.message)

    def clear_result(self) -> None:
        self._view = None
        self.summary.setText("")
        self.message.setText(NO_RESULT)
        self.result.setCurrentWidget(self.message)

    def show_problem(self, text: str) -> None:
        for row in self._rows.values():  # a removal refused: the row is usable again
            row.setEnabled(True)
        self._view = None
        self.summary.setText("")
        self.message.setText(text)
        self.result.setCurrentWidget(self.message)

    @property
    def view(self) -> AdapterComparisonView | None:
        return self._view

    def show_view(self, view: AdapterComparisonView) -> None:
        self._view = view
        base, adapted = np.asarray(view.base_probs, float), np.asarray(view.probs, float)
        y = np.arange(len(view.token_ids), dtype=float)
        self.base_item.setOpts(x0=np.zeros_like(y), y=y - 0.2, width=base)
        self.adapted_item.setOpts(x0=np.zeros_like(y), y=y + 0.2, width=adapted)
        self.bars.setYRange(-0.6, len(y) - 0.4, padding=0)
        self.bars.setXRange(0, max(float(base.max(initial=0)), float(adapted.max(initial=0)), 0.05) * 1.1, padding=0)
        before, after = (display_text(view.token_texts[int(np.argmax(p))]) for p in (base, adapted))
        top1 = (f"top-1 unchanged (“{before}”)" if view.top1_same
                else f"top-1 changed: “{before}” → “{after}”")
        chosen = dict(zip(view.token_ids, view.token_texts)).get(view.target_id, f"id {view.target_id}")
        said = (f"Token {view.position} (the model chose “{display_text(chosen)}”) with {' · '.join(view.adapters)}: "
                f"KL {view.kl:.3f} nats · {top1}")
        self.summary.setText(f"{html.escape(said)}<br>{KEY}")  # rich text: a token such as <|im_end|> escaped
        self.result.setCurrentWidget(self.bars)
        self._label_ticks()

    # What is drawn, for tests (they assert on data, not pixels).
    def bar_widths(self) -> dict[str, np.ndarray]:
        return {"without": np.asarray(self.base_item.opts["width"], float).copy(),
                "with": np.asarray(self.adapted_item.opts["width"], float).copy()}

    def tick_labels(self) -> list[str]:
        return list(self._ticks)

    # -- edits --------------------------------------------------------------------------------
    def _edited(self, name: str) -> None:
        row = self._rows[name]
        self._pending[name] = (row.enabled.isChecked(), round(row.scale.value(), 2))
        self.send_timer.start()

    def _remove(self, name: str) -> None:
        # Greyed at once: the engine answers between two steps, and a comparison being replayed can hold it for
        # seconds (at 1366x768 the removed row stayed live, switched on, for over 2 s).
        self._rows[name].setEnabled(False)
        self.remove_requested.emit(name)

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for name, (enabled, scale) in pending.items():
            self.adapter_changed.emit(name, enabled, scale)

    # -- drawing ------------------------------------------------------------------------------
    def _label_ticks(self) -> None:
        """Each pair of bars named on the left, elided to a third of the plot (the tooltip names it whole)."""
        view = self._view
        if view is None:
            return
        axis = self.bars.getAxis("left")
        metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
        room = max(self.bars.width() // 3, 40)
        self._ticks = [metrics.elidedText(display_text(t), Qt.ElideRight, room) for t in view.token_texts]
        axis.setTicks([[(i, t) for i, t in enumerate(self._ticks)]])
        axis.setWidth(min(max((metrics.horizontalAdvance(t) for t in self._ticks), default=20) + 10, room + 10))

    def _hover(self, position) -> None:
        view = self._view
        box = self.bars.getViewBox()
        i = round(box.mapSceneToView(position).y())
        if view is None or not 0 <= i < len(view.token_ids) or position.x() < box.sceneBoundingRect().left():
            self.bars.setToolTip("")
            return
        self.bars.setToolTip(f"“{display_text(view.token_texts[i])}” (id {view.token_ids[i]}): "
                             f"without {view.base_probs[i]:.4f}, with the adapters {view.probs[i]:.4f}")
