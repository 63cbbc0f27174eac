"""Interventions, the model's own what-if: the controls that build a list of Interventions (an attention
head, an MoE expert or a layer's MLP, scaled or switched off), an unmistakable banner while any is
active, and the selected token's distribution as loaded beside under the interventions, with the KL and
whether the top-1 changed. Draws InterventionView records only; the app replays and applies them."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QHBoxLayout,
                               QLabel, QListWidget, QPushButton, QSlider, QSpinBox, QStackedWidget, QVBoxLayout,
                               QWidget)

from engine.records import Intervention, InterventionView

KIND_NAMES = {"head": "attention head", "expert": "expert", "mlp": "layer's MLP"}
BASE, INTERVENED = "#95a5a6", "#e67e22"  # bar colours: the model as loaded, with the interventions
ACTIVE_STYLE = "background: #c0392b; color: white; padding: 4px; border-radius: 3px; font-weight: bold;"
INACTIVE_STYLE = "padding: 4px; border: 1px solid palette(mid); border-radius: 3px;"
NO_RESULT = "Add an intervention, then select a token in the chat: its distribution is recomputed with it."
COMPUTING = "Computing the what-if (the context replayed with and without the interventions)…"
SCALE_STEPS = 20  # the slider's steps over 0..2


def display_text(text: str) -> str:
    """Make whitespace visible (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class InterventionPanel(QWidget):
    changed = Signal(tuple)  # the interventions now (a tuple of Intervention; empty: the model as loaded)
    keep_changed = Signal(bool)  # True: generation runs with them too, across turns

    def __init__(self, parent=None):
        super().__init__(parent)
        self._shape = (0, 0, 0, 0)  # layers, heads, kv heads, experts
        self._interventions: list[Intervention] = []
        self._view: InterventionView | None = None
        self._ticks: list[str] = []
        self._setup_ui()
        self._layout()
        self.set_model_shape(0, 0, 0, 0)
        self._show_banner()

    def _setup_ui(self) -> None:
        self.banner = QLabel("", wordWrap=True)
        self.kind = QComboBox()
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.layer = QSpinBox(prefix="layer ")
        self.index = QSpinBox()
        self.index.valueChanged.connect(self._describe_index)
        self.index_note = QLabel("")
        self.scale = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, decimals=2, value=0.0,
                                    specialValueText="0 (off)", toolTip="0 switches it off; 1 leaves it as it is")
        self.scale_slider = QSlider(Qt.Horizontal, minimum=0, maximum=SCALE_STEPS)
        self.scale_slider.valueChanged.connect(lambda step: self.scale.setValue(step * 2 / SCALE_STEPS))
        self.scale.valueChanged.connect(lambda v: self.scale_slider.setValue(round(v * SCALE_STEPS / 2)))
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self.add_from_controls)
        self.list = QListWidget(selectionMode=QAbstractItemView.ExtendedSelection)
        self.list.setMaximumHeight(72)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._remove_selected)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(lambda: self._set_interventions([]))
        self.keep = QCheckBox("Keep on for the next turns",
                              toolTip="Unticked, interventions change only this what-if and are cleared when a new "
                                      "turn starts; ticked, the chat generates with them")
        self.keep.toggled.connect(self._keep_toggled)
        self.summary = QLabel("", wordWrap=True)
        self.message = QLabel(NO_RESULT, wordWrap=True, alignment=Qt.AlignCenter)
        self.bars = pg.PlotWidget()
        self.bars.setLabel("left", "probability")
        self.bars.getAxis("left").enableAutoSIPrefix(False)
        self.bars.setMouseEnabled(False, False)
        self.legend = self.bars.addLegend(offset=(-10, 10))
        empty = {"x": np.zeros(0), "height": np.zeros(0), "width": 0.4}
        # One brush per item, never per bar: the legend draws the item's brush, so swatch and bars match.
        self.base_item = pg.BarGraphItem(**empty, brush=BASE, pen=None, name="model as loaded")
        self.intervened_item = pg.BarGraphItem(**empty, brush=INTERVENED, pen=None, name="with the interventions")
        self.bars.addItem(self.base_item)
        self.bars.addItem(self.intervened_item)
        self.bars.getViewBox().sigResized.connect(lambda *_: self._label_ticks())
        self.bars.scene().sigMouseMoved.connect(self._hover)

    def _layout(self) -> None:
        build = QGridLayout()
        build.addWidget(self.kind, 0, 0)
        build.addWidget(self.layer, 0, 1)
        build.addWidget(self.index, 0, 2)
        build.addWidget(self.index_note, 0, 3)
        scale = QHBoxLayout()
        scale.addWidget(QLabel("scale"))
        scale.addWidget(self.scale_slider, 1)
        scale.addWidget(self.scale)
        scale.addWidget(self.add_button)
        build.addLayout(scale, 1, 0, 1, 4)
        buttons = QVBoxLayout()
        buttons.addWidget(self.remove_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        active = QHBoxLayout()
        active.addWidget(self.list, 1)
        active.addLayout(buttons)
        self.result = QStackedWidget()
        self.result.addWidget(self.message)
        self.result.addWidget(self.bars)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addLayout(build)
        layout.addLayout(active)
        layout.addWidget(self.keep)
        layout.addWidget(self.summary)
        layout.addWidget(self.result, 1)

    # -- API ----------------------------------------------------------------------------------
    def set_model_shape(self, layers: int, heads: int, kv_heads: int, experts: int) -> None:
        """Bound the controls by the loaded model (experts 0: a dense model, no expert kind). Another shape
        is another model: its interventions are dropped."""
        if (layers, heads, kv_heads, experts) != self._shape:
            self._shape = (layers, heads, kv_heads, experts)
            self._set_interventions([])
        self.kind.blockSignals(True)
        self.kind.clear()
        for kind in ("head", "expert", "mlp"):
            if kind != "expert" or experts > 0:
                self.kind.addItem(KIND_NAMES[kind], kind)
        self.kind.blockSignals(False)
        self.layer.setRange(0, max(layers - 1, 0))
        self.add_button.setEnabled(layers > 0)
        self.add_button.setToolTip("" if layers > 0 else "Load a model first")
        self._kind_changed()

    def interventions(self) -> tuple[Intervention, ...]:
        return tuple(self._interventions)

    def keep_on(self) -> bool:
        return self.keep.isChecked()

    def clear_unless_kept(self) -> None:
        """A new turn starts: interventions not kept on end with the what-if they were made for."""
        if not self.keep_on():
            self._set_interventions([])

    def add_from_controls(self) -> Intervention:
        """Add what the controls say; one already on the same head, expert or MLP takes the new scale."""
        kind = self.kind.currentData()
        new = Intervention(kind, self.layer.value(), 0 if kind == "mlp" else self.index.value(),
                           round(self.scale.value(), 2))
        kept = [i for i in self._interventions if (i.kind, i.layer, i.index) != (new.kind, new.layer, new.index)]
        self._set_interventions(kept + [new])
        return new

    def show_computing(self) -> None:
        self.summary.setText("")  # the last token's KL line must not stand above the next one's computing
        self.message.setText(COMPUTING)
        self.result.setCurrentWidget(self.message)

    def clear_result(self) -> None:
        self._view = None
        self.summary.setText("")
        self.message.setText(NO_RESULT)
        self.result.setCurrentWidget(self.message)

    def show_problem(self, text: str) -> None:
        """The what-if could not be computed: say why instead of the last result."""
        self._view = None
        self.message.setText(text)
        self.result.setCurrentWidget(self.message)

    @property
    def view(self) -> InterventionView | None:
        """The result on screen (None while there is none)."""
        return self._view

    def set_interventions(self, interventions) -> None:
        """Replace the list (a script or a test; the controls add one at a time)."""
        self._set_interventions(list(interventions))

    def show_view(self, view: InterventionView) -> None:
        self._view = view
        base, probs = np.asarray(view.base_probs, float), np.asarray(view.probs, float)
        x = np.arange(len(view.token_ids))
        self.base_item.setOpts(x=x - 0.2, height=base)
        self.intervened_item.setOpts(x=x + 0.2, height=probs)
        self.bars.setXRange(-0.6, len(x) - 0.4, padding=0)
        self.bars.setYRange(0, max(float(base.max(initial=0)), float(probs.max(initial=0)), 0.05) * 1.1, padding=0)
        before, after = (display_text(view.token_texts[int(np.argmax(p))]) for p in (base, probs))
        top1 = f"top-1 unchanged (“{before}”)" if view.top1_same else f"top-1 changed (“{before}” → “{after}”)"
        chosen = dict(zip(view.token_ids, view.token_texts)).get(view.target_id, f"id {view.target_id}")
        unchanged = " — nothing changed here: what was switched off did not contribute to this token " \
            "(e.g. an expert the router did not pick for it)" if view.kl == 0 and view.top1_same else ""
        self.summary.setText(f"At the selected token (the model chose “{display_text(chosen)}”): "
                             f"KL {view.kl:.3f} nats · {top1}{unchanged}")
        self.result.setCurrentWidget(self.bars)
        self._label_ticks()

    # What is drawn, for tests (they assert on data, not pixels).
    def bar_heights(self) -> dict[str, np.ndarray]:
        return {"base": np.asarray(self.base_item.opts["height"], float).copy(),
                "intervened": np.asarray(self.intervened_item.opts["height"], float).copy()}

    def banner_text(self) -> str:
        return self.banner.text()

    # -- controls -----------------------------------------------------------------------------
    def _set_interventions(self, interventions: list[Intervention]) -> None:
        if interventions == self._interventions:
            return
        self._interventions = list(interventions)
        self.list.clear()
        self.list.addItems([i.label for i in self._interventions])
        self._show_banner()
        if not self._interventions:
            self.clear_result()
        self.changed.emit(self.interventions())

    def _remove_selected(self) -> None:
        rows = {index.row() for index in self.list.selectedIndexes()}
        self._set_interventions([i for row, i in enumerate(self._interventions) if row not in rows])

    def _keep_toggled(self, keep: bool) -> None:
        self._show_banner()
        self.keep_changed.emit(keep)

    def _show_banner(self) -> None:
        if self._interventions:
            reach = "kept on for the next turns" if self.keep_on() else "this what-if only"
            self.banner.setText(f"Intervention active: {' · '.join(i.label for i in self._interventions)} ({reach})")
            self.banner.setStyleSheet(ACTIVE_STYLE)
        else:
            self.banner.setText("No intervention: the model as loaded.")
            self.banner.setStyleSheet(INACTIVE_STYLE)

    def _kind_changed(self, *_) -> None:
        kind = self.kind.currentData()
        _, heads, _, experts = self._shape
        self.index.setVisible(kind != "mlp")
        self.index_note.setVisible(kind == "head")
        self.index.setPrefix(f"{kind} ")
        self.index.setRange(0, max((heads if kind == "head" else experts) - 1, 0))
        self._describe_index()

    def _describe_index(self, *_) -> None:
        """GQA: which KV group the chosen query head reads (its keys and values are shared; only its output goes)."""
        _, heads, kv_heads, _ = self._shape
        if heads and kv_heads:
            group = self.index.value() // max(heads // kv_heads, 1)
            self.index_note.setText(f"KV group {group} of {kv_heads}")

    # -- drawing ------------------------------------------------------------------------------
    def tick_labels(self) -> list[str]:
        """The x axis's labels as drawn (elided), for tests."""
        return list(self._ticks)

    def _label_ticks(self) -> None:
        """Every pair of bars labelled, on two staggered lines when one line leaves too little room, each
        elided to what it has (the tooltip names the token whole); the axis drops a label overrunning its ends."""
        view = self._view
        if view is None:
            return
        axis = self.bars.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
        low, high = self.bars.getViewBox().viewRange()[0]
        slot = self.bars.getViewBox().width() / max(high - low, 1e-9)  # pixels per pair of bars
        texts = [display_text(t) for t in view.token_texts]
        stagger = any(metrics.horizontalAdvance(t) + 4 > slot for t in texts)
        self._ticks = []
        for i, text in enumerate(texts):
            edge = 2 * min(i - low, high - i) * slot
            room = int(min(2 * slot if stagger else slot, edge)) - 4
            self._ticks.append(metrics.elidedText(text, Qt.ElideRight, room))
        axis.setTicks([[(i, ("\n" if stagger and i % 2 else "") + t) for i, t in enumerate(self._ticks)]])
        axis.setHeight(metrics.height() * (2 if stagger else 1) + 12)

    def _hover(self, position) -> None:
        view = self._view
        box = self.bars.getViewBox()
        i = round(box.mapSceneToView(position).x())
        if view is None or not 0 <= i < len(view.token_ids) or position.y() < box.sceneBoundingRect().top():
            self.bars.setToolTip("")
            return
        self.bars.setToolTip(f"“{display_text(view.token_texts[i])}” (id {view.token_ids[i]}): "
                             f"as loaded {view.base_probs[i]:.4f}, with the interventions {view.probs[i]:.4f}")
