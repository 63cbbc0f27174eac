"""Attention maps: for a chosen layer and head (or the mean over heads), each generated token's
attention over every earlier position, with token labels and the head's KV group (GQA)."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from engine.records import StepRecord


def display_text(text: str) -> str:
    """Make whitespace visible on an axis (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class AttentionPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.n_layers = self.n_heads = self.n_kv_heads = 0
        self._rows: list[dict[tuple[int, int], np.ndarray]] = []  # per step: (layer, head) -> weights
        self._labels: list[str] = []
        self._matrix = np.zeros((0, 0))
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.layer = QSpinBox(prefix="layer ")
        self.head = QComboBox()
        self.head.setMinimumContentsLength(15)
        self.group = QLabel("")
        self.layer.valueChanged.connect(self._redraw)
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
        layout.addWidget(self.plot, 1)

    # -- API ----------------------------------------------------------------------------------
    def set_model_info(self, n_layers: int, n_heads: int, n_kv_heads: int) -> None:
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self.layer.setRange(0, max(n_layers - 1, 0))
        self.head.blockSignals(True)
        self.head.clear()
        self.head.addItems(["mean over heads"] + [f"head {h}" for h in range(n_heads)])
        self.head.blockSignals(False)
        self.clear()

    def set_token_labels(self, labels: list[str]) -> None:
        self._labels = list(labels)
        self._redraw()

    def clear(self) -> None:
        self._rows = []
        self._redraw()

    def add_step(self, record: StepRecord) -> None:
        if record.attention:
            self._rows.append({(a.layer, a.head): np.array(a.weights) for a in record.attention})
            self._redraw()

    def matrix(self) -> np.ndarray:
        return self._matrix.copy()

    # -- drawing ------------------------------------------------------------------------------
    def _redraw(self) -> None:
        layer, choice = self.layer.value(), self.head.currentIndex()
        heads = range(self.n_heads) if choice <= 0 else [choice - 1]
        rows = []
        for step in self._rows:
            vectors = [step[(layer, h)] for h in heads if (layer, h) in step]
            rows.append(np.mean(vectors, axis=0) if vectors else np.zeros(0))
        width = max((len(r) for r in rows), default=0)
        matrix = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            matrix[i, :len(r)] = r  # later positions do not exist yet for earlier queries
        self._matrix = matrix
        # sqrt: most heads park their mass on the first token ("attention sink"); a square root keeps
        # the rest of the row visible instead of black
        self.image.setImage(np.sqrt(np.nan_to_num(matrix)).T if matrix.size else np.zeros((1, 1)), levels=(0, 1))
        self.image.setRect(QRectF(-0.5, -0.5, max(width, 1), max(len(rows), 1)))  # cell i centred on i
        if choice > 0 and self.n_kv_heads:
            group = (choice - 1) // (self.n_heads // self.n_kv_heads)
            self.group.setText(f"head {choice - 1} reads KV group {group} of {self.n_kv_heads}")
        else:
            self.group.setText(f"{self.n_heads} heads share {self.n_kv_heads} KV groups")
        if width and self._labels:
            step = max(1, width // 14)  # at most ~14 labels so they stay readable
            ticks = [(i, display_text(self._labels[i])[:8]) for i in range(0, min(width, len(self._labels)), step)]
            self.plot.getAxis("bottom").setTicks([ticks])
