"""Memory: the KV block map (free / cached prefix / per-sequence / shared), KV bytes against what
contiguous caches would reserve, weights by dtype, and RSS / CUDA curves over time. The CUDA curves
exist only while the snapshots come from a model on CUDA (a CPU model has none to show), and clear()
forgets the previous model entirely (a model switch), so the panel never shows the old one's weights."""
from __future__ import annotations

from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.records import MemorySnapshot

PER_ROW = 32
FREE, CACHED, SHARED = 0, 1, 2  # colour indices; sequences get 3, 4, ...
PALETTE = ["#eeeeee", "#b8e0b8", "#e74c3c", "#2e86de", "#f39c12", "#8e44ad", "#16a085", "#d35400", "#2c3e50"]
HISTORY = 300


def mb(n: int) -> str:
    """Decimal megabytes, as the model panel and the status line count them (ModelFacts.weights)."""
    return f"{n / 1e6:,.1f} MB"


def sequence_name(key: str, keys: list[str]) -> str:
    """'request 3', or 'request 3 · sample 1' when the request has several (a snapshot names a sequence
    'request.sample')."""
    request, _, sample = key.partition(".")
    several = sum(k.partition(".")[0] == request for k in keys) > 1
    return f"request {request}" + (f" · sample {sample}" if several else "")


class MemoryPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._states: list[str] = []
        self._rss: deque[float] = deque(maxlen=HISTORY)
        self._cuda: deque[float] = deque(maxlen=HISTORY)
        self._reserved: deque[float] = deque(maxlen=HISTORY)
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.map_plot = pg.PlotWidget(title="KV blocks")
        self.map_plot.invertY(True)
        self.map_plot.setAspectLocked(True)  # blocks are squares
        self.map_plot.setMouseEnabled(False, False)
        self.map_plot.hideAxis("left")
        self.map_plot.hideAxis("bottom")
        self.map_image = pg.ImageItem()
        self.map_plot.addItem(self.map_image)
        self.legend = QLabel("")
        self.figures = QLabel("No model loaded.")
        self.figures.setWordWrap(True)
        self.curves = pg.PlotWidget(title="process memory")
        self.curves.setLabel("left", "MB")
        self.curves.setLabel("bottom", "snapshot (two a second while generating)")
        self.curves.addLegend()
        self.curves.setMinimumHeight(160)
        self.curves.getAxis("left").enableAutoSIPrefix(False)
        self.rss_curve_item = self.curves.plot(pen=pg.mkPen("#2e86de", width=2), name="process RSS")
        self.cuda_curve_item = self.reserved_curve_item = None  # added with the first CUDA snapshot

    def _layout(self) -> None:
        # Side by side: the panel usually lives in a wide, short dock under the chat.
        left = QVBoxLayout()
        left.addWidget(self.map_plot, 1)
        left.addWidget(self.legend)
        layout = QHBoxLayout(self)
        layout.addLayout(left, 2)
        layout.addWidget(self.figures, 2)
        layout.addWidget(self.curves, 3)

    # -- API ----------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget everything shown (a model switch: the next snapshot is the new model's)."""
        self._states = []
        self._rss.clear()
        self._cuda.clear()
        self._reserved.clear()
        self.rss_curve_item.setData(np.zeros(0))
        self._show_cuda(False)
        self.map_image.clear()
        self.legend.setText("")
        self.figures.setText("No model loaded.")

    def show_memory(self, snap: MemorySnapshot) -> None:
        states = self._block_states(snap)
        if states != self._states or self.map_image.image is None:  # the map changes once a block of tokens
            self._states = states
            self._draw_map(snap)
        self._rss.append(snap.process_rss / 1e6)
        self._cuda.append(snap.cuda_allocated / 1e6)
        self._reserved.append(snap.cuda_reserved / 1e6)
        self.rss_curve_item.setData(np.array(self._rss))
        if self._show_cuda(any(self._reserved) or any(self._cuda)):
            self.cuda_curve_item.setData(np.array(self._cuda))
            self.reserved_curve_item.setData(np.array(self._reserved))
        weights = ", ".join(f"{k} {mb(v)}" for k, v in snap.weight_bytes.items())
        self.figures.setText(
            f"<b>KV cache</b>: {snap.kv_blocks_used} of {snap.kv_blocks_total} blocks used "
            f"({snap.kv_blocks_shared} shared, {snap.kv_blocks_cached_free} cached, {snap.kv_blocks_free} free), "
            f"{snap.kv_block_size} tokens each<br>"
            f"in use {mb(snap.kv_used_bytes)} for {snap.kv_tokens} tokens · waste {snap.kv_waste_pct:.1f}%<br>"
            f"contiguous max-length caches would reserve {mb(snap.kv_contiguous_bytes)}<br><br>"
            f"<b>Weights</b>: {weights or '—'}<br><b>Process RSS</b>: {mb(snap.process_rss)}"
            + (f"<br><b>CUDA</b>: {mb(snap.cuda_allocated)} allocated, {mb(snap.cuda_reserved)} reserved"
               if snap.cuda_reserved else ""))

    # Data as drawn, for tests.
    def block_states(self) -> list[str]:
        return list(self._states)

    def rss_curve(self) -> np.ndarray:
        return np.array(self._rss)

    def curve_names(self) -> list[str]:
        """The curves the plot's legend lists."""
        return [label.text for _, label in self.curves.plotItem.legend.items]

    def _show_cuda(self, shown: bool) -> bool:
        """Add the CUDA curves (and their legend entries) or remove them; returns `shown`."""
        if shown and self.cuda_curve_item is None:
            self.cuda_curve_item = self.curves.plot(pen=pg.mkPen("#e67e22", width=2), name="CUDA allocated")
            self.reserved_curve_item = self.curves.plot(pen=pg.mkPen("#e67e22", width=1, style=Qt.DashLine),
                                                        name="CUDA reserved")
        elif not shown and self.cuda_curve_item is not None:
            for item in (self.cuda_curve_item, self.reserved_curve_item):
                self.curves.removeItem(item)  # its legend entry goes with it
            self.cuda_curve_item = self.reserved_curve_item = None
        return shown

    # -- drawing ------------------------------------------------------------------------------
    @staticmethod
    def _block_states(snap: MemorySnapshot) -> list[str]:
        states = ["free"] * snap.kv_blocks_total
        for b in snap.cached_blocks:
            states[b] = "cached"
        for key, blocks in snap.block_tables.items():
            for b in blocks:
                states[b] = "shared" if snap.block_refs and snap.block_refs[b] > 1 else f"used:{key}"
        return states

    def _draw_map(self, snap: MemorySnapshot) -> None:
        keys = sorted({s[5:] for s in self._states if s.startswith("used:")})
        colour_of = {"free": FREE, "cached": CACHED, "shared": SHARED}
        colour_of.update({f"used:{k}": 3 + i % (len(PALETTE) - 3) for i, k in enumerate(keys)})
        n = len(self._states)
        rows = -(-n // PER_ROW) if n else 1
        grid = np.full(rows * PER_ROW, -1.0)
        grid[:n] = [colour_of[s] for s in self._states]
        rgba = np.array([pg.mkColor(c).getRgb() for c in PALETTE] + [(255, 255, 255, 0)], dtype=np.ubyte)
        image = rgba[grid.astype(int)].reshape(rows, PER_ROW, 4)
        self.map_image.setImage(image.transpose(1, 0, 2), levels=(0, 255))
        self.map_image.setRect(QRectF(0, 0, PER_ROW, rows))
        # Squares drawn as glyphs: Qt's rich text ignores a span's border, and the free blocks' near-white
        # background alone vanished on the light theme; free is the outlined (empty) square.
        swatch = lambda c, t: f"<span style='color:{c}'>■</span> {t}"  # noqa: E731
        self.legend.setText(" ".join(["<span style='color:#888'>□</span> free", swatch(PALETTE[CACHED], "cached prefix"),
                                      swatch(PALETTE[SHARED], "shared")]
                                     + [swatch(PALETTE[colour_of[f"used:{k}"]], sequence_name(k, keys)) for k in keys[:6]]))
