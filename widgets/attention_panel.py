"""Attention maps, computed on demand: for a chosen layer and head (or the mean over heads), each
generated token's attention over every earlier position, with token labels and the head's KV group
(GQA). Nothing is recorded while generating: the panel draws an AttentionView (one layer, recomputed by
replay when someone looks) and asks for the layer it shows with `wanted` when it comes on screen or the
layer changes; while a view is being computed it says so."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from engine.records import AttentionView

IDLE = ("Attention is computed by replay while this panel is on screen: at the end of a reply, "
        "or for the layer you pick.")


def display_text(text: str) -> str:
    """Make whitespace visible on an axis (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class AttentionPanel(QWidget):
    wanted = Signal(int)  # a layer: its view is wanted (sent when the panel is shown or the layer changes)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.n_layers = self.n_heads = self.n_kv_heads = 0
        self._view: AttentionView | None = None
        self._labels: list[str] = []
        self._matrix = np.zeros((0, 0))
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.layer = QSpinBox(prefix="layer ")
        self.head = QComboBox()
        self.head.setMinimumContentsLength(15)
        self.group = QLabel("")
        self.note = QLabel(IDLE)
        self.note.setWordWrap(True)
        self.layer.valueChanged.connect(self._layer_changed)
        self.head.currentIndexChanged.connect(self._redraw)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "key position (earlier tokens) · colour = √ attention")
        self.plot.setLabel("left", "generated token (query)")
        self.plot.invertY(True)
        self.image = pg.ImageItem()
        self.image.setColorMap(pg.colormap.get("magma"))
        self.plot.addItem(self.image)

    def _layout(self) -> None:
        controls = QHBoxLayout()
        controls.addWidget(self.layer)
        controls.addWidget(self.head)
        controls.addWidget(self.group, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.note)
        layout.addWidget(self.plot, 1)

    # -- API ----------------------------------------------------------------------------------
    def set_model_info(self, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self.layer.blockSignals(True)
        self.layer.setRange(0, max(n_layers - 1, 0))
        self.layer.blockSignals(False)
        self.head.blockSignals(True)
        self.head.clear()
        self.head.addItems(["mean over heads"] + [f"head {h}" for h in range(n_heads)])
        self.head.blockSignals(False)
        self.clear()

    def set_token_labels(self, labels: list[str]) -> None:
        """The key axis: the request's prompt tokens, then each generated one (only the ticks change)."""
        self._labels = list(labels)
        self._set_ticks()

    def clear(self) -> None:
        self._view = None
        self.note.setText(IDLE)
        self._redraw()

    def current_layer(self) -> int:
        return self.layer.value()

    def show_computing(self) -> None:
        self.note.setText(f"Computing layer {self.layer.value()}'s attention…")

    def show_view(self, view: AttentionView) -> None:
        self._view = view
        first = view.query_start
        self.note.setText(f"Layer {view.layer}: queries at positions {first}–{first + view.num_queries - 1} "
                          f"(the reply's latest {view.num_queries} steps)")
        self._redraw()

    def matrix(self) -> np.ndarray:
        """What is drawn: [query row, key position], NaN where a position is later than the query."""
        return self._matrix.copy()

    # -- Qt -----------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        self.wanted.emit(self.layer.value())  # on screen now: the view is wanted (a repeat costs nothing)

    # -- drawing ------------------------------------------------------------------------------
    def _layer_changed(self, layer: int) -> None:
        self._redraw()
        self.wanted.emit(layer)

    def _redraw(self) -> None:
        layer, choice = self.layer.value(), self.head.currentIndex()
        view = self._view if self._view is not None and self._view.layer == layer else None
        if view is None:
            matrix = np.zeros((0, 0))
        else:
            weights = view.weights if choice <= 0 else view.weights[choice - 1:choice]  # [H, Q, S]
            matrix = weights.mean(axis=0).astype(np.float64)
            rows, cols = np.indices(matrix.shape)
            matrix[cols > rows + view.query_start] = np.nan  # later positions do not exist for that query
        self._matrix = matrix
        # sqrt: most heads park their mass on the first token ("attention sink"); a square root keeps
        # the rest of the row visible instead of black
        self.image.setImage(np.sqrt(np.nan_to_num(matrix)).T if matrix.size else np.zeros((1, 1)), levels=(0, 1))
        self.image.setRect(QRectF(-0.5, -0.5, max(matrix.shape[1], 1), max(matrix.shape[0], 1)))  # cell i on i
        if choice > 0 and self.n_kv_heads:
            group = (choice - 1) // (self.n_heads // self.n_kv_heads)
            self.group.setText(f"head {choice - 1} reads KV group {group} of {self.n_kv_heads}")
        else:
            self.group.setText(f"{self.n_heads} heads share {self.n_kv_heads} KV groups")
        self._set_ticks()

    def _set_ticks(self) -> None:
        width = self._matrix.shape[1]
        if width and self._labels:
            step = max(1, width // 14)  # at most ~14 labels so they stay readable
            ticks = [(i, display_text(self._labels[i])[:8]) for i in range(0, min(width, len(self._labels)), step)]
            self.plot.getAxis("bottom").setTicks([ticks])
