"""What quantization changed along the conversation: per token the KL divergence of the quantized model's
next-token distribution from the float reference's, the tokens where their top-1 differs, and for a
clicked token both top-N side by side. Draws QuantDriftView records; asks for them (compute_requested)
because the float reference costs memory, and says what it holds (release_requested frees it)."""
from __future__ import annotations

import re

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QProgressBar, QPushButton, QStackedWidget, QVBoxLayout,
                               QWidget)

from engine.records import QuantDriftView

KL_BAR, DIFFERS, NEXT, SELECTED = "#2e86de", "#e74c3c", "#f1c40f", "#f39c12"
FIRST_WINDOW = 150  # columns shown at first; the overview below scrolls through the rest
AXIS_WIDTH = 48  # the same left axis on the x-linked plots, so their columns line up
EMPTY = ("Compares every next-token prediction of this conversation with the same model in float weights. "
         "The float copy is loaded only when asked, and it costs memory (about 4 bytes per parameter "
         "in float32).")
NOT_QUANTIZED = ("The loaded model is not quantized: every weight is already float, so nothing drifts. "
                 "Open it with Weights int8 or int4 (model panel), or open a Q4/Q8 GGUF, to see what "
                 "quantization changes.")
COMPUTING = "Computing drift: running the conversation through the float reference and the quantized model…"
EXPLAIN = ("Bars: KL(float ‖ quantized) of each next-token prediction, in nats (0 = the same distribution). "
           "Red ticks: the two rank a different token first. Wheel zooms; click a column.")


def display_text(text: str) -> str:
    """Make whitespace visible (as the probabilities panel does: widgets import no other widget)."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def quantized_kind(weights: str) -> str:
    """'int4 56.6 MB + float32 28.3 MB' -> 'int4': the first (quantized) kind, without its size."""
    return re.sub(r"\s+[\d.,]+\s*[kMGT]?B$", "", weights.split(" + ")[0].strip()) or weights


class TopList(QWidget):
    """One model's top-N at a column as horizontal bars: token (elided, whole on hover), probability; the
    token that came next in gold. Both lists share the x range 0..1, so their bars compare directly."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.title = QLabel(title)
        self.plot = pg.PlotWidget()
        self.plot.invertY(True)
        self.plot.hideAxis("bottom")
        self.plot.hideButtons()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.setXRange(0, 1.5, padding=0)  # room after a p = 1 bar for its number
        self.plot.getAxis("left").setWidth(72)
        self.bars = pg.BarGraphItem(x0=0, y=np.zeros(0), height=0.7, width=np.zeros(0), pen=None)
        self.plot.addItem(self.bars)
        self.numbers: list[pg.TextItem] = []
        self.rows: list[tuple[str, float, bool]] = []  # (token text, probability, came next) as drawn
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.plot, 1)

    def show_top(self, texts: list[str], probs: np.ndarray, next_text: str | None) -> None:
        self.rows = [(t, float(p), t == next_text) for t, p in zip(texts, probs)]
        rows = np.arange(len(texts))
        self.bars.setOpts(y=rows, width=np.asarray(probs, dtype=float),
                          brushes=[NEXT if came else KL_BAR for _, _, came in self.rows])
        for item in self.numbers:
            self.plot.removeItem(item)
        colour = pg.getConfigOption("foreground")
        self.numbers = [pg.TextItem(f"{p:.3f}", color=colour, anchor=(0, 0.5)) for p in probs]
        for row, (item, p) in enumerate(zip(self.numbers, probs)):
            item.setPos(float(p), row)
            self.plot.addItem(item)
        axis = self.plot.getAxis("left")
        metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
        axis.setTicks([[(i, metrics.elidedText(display_text(t), Qt.ElideRight, 62)) for i, t in enumerate(texts)]])
        self.plot.setYRange(-0.6, max(len(texts), 1) - 0.4, padding=0)
        self.plot.setToolTip("\n".join(f"“{display_text(t)}”  {p:.4f}" + ("  ← came next" if came else "")
                                       for t, p, came in self.rows))


class FillPage(QWidget):
    """The shown drift's page. Its wrapped labels would make it height-for-width, and Qt then takes the
    page's *preferred* height for its width (the plots' 250-500 px hints added up, ~1200 px) as the least
    it can have, so the dock scrolled at 1366×768 with the top-N lists off screen. The plots stretch, so
    the page's plain minimum is the honest one."""

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt's name)
        return False


class QuantDriftPanel(QWidget):
    compute_requested = Signal()
    release_requested = Signal()
    column_selected = Signal(int)  # absolute position of the token the clicked column predicted

    def __init__(self, parent=None):
        super().__init__(parent)
        self._view: QuantDriftView | None = None
        self._not_quantized = False
        self._setup_ui()
        self._layout()
        self.clear()

    def _setup_ui(self) -> None:
        self.header = QLabel("<b>Quantization drift</b>", wordWrap=True)
        self.message = QLabel(EMPTY, wordWrap=True)
        self.compute_button = QPushButton("Compute drift")
        self.compute_button.clicked.connect(self.compute_requested)
        self.busy = QProgressBar(minimum=0, maximum=0)  # no total: replay reports no progress
        self.memory = QLabel("", wordWrap=True)
        self.release_button = QPushButton("Release", toolTip="Free the float reference's memory")
        self.release_button.clicked.connect(self._release)
        self.recompute_button = QPushButton("Recompute", toolTip="Compare the conversation as it is now")
        self.recompute_button.clicked.connect(self.compute_requested)
        self.explanation = QLabel(EXPLAIN, wordWrap=True)
        self.summary = QLabel("", wordWrap=True)  # a narrow left dock must not scroll sideways
        self.strip = self._plot("KL (nats)")
        self.strip.setLabel("bottom", "token position")
        self.strip.setMouseEnabled(x=True, y=False)
        self.strip.getViewBox().setAutoVisible(y=True)  # y follows the columns in view: small KLs stay visible
        self.kl_bars = pg.BarGraphItem(x=np.zeros(0), height=np.zeros(0), width=0.8, pen=None, brush=KL_BAR)
        self.strip.addItem(self.kl_bars)
        self.lane = self._plot(height=30)  # the disagreement ticks: a lane of their own, whatever the KL scale
        self.lane.hideAxis("bottom")
        self.lane.setXLink(self.strip)
        self.lane.setYRange(-1, 1, padding=0)
        self.lane.setMouseEnabled(x=True, y=False)
        self.disagree_marks = pg.ScatterPlotItem(symbol="|", size=14, pen=pg.mkPen(DIFFERS, width=2))
        self.lane.addItem(self.disagree_marks)
        self.overview = self._plot(height=60)
        self.overview.setMouseEnabled(x=False, y=False)
        self.overview_curve = self.overview.plot([], [], pen=pg.mkPen(KL_BAR), fillLevel=0, brush=KL_BAR)
        self.overview_marks = pg.ScatterPlotItem(symbol="|", size=8, pen=pg.mkPen(DIFFERS))
        self.overview.addItem(self.overview_marks)
        self.region = pg.LinearRegionItem(brush=pg.mkBrush(241, 196, 15, 60))
        self.overview.addItem(self.region)
        self.region.sigRegionChanged.connect(lambda: self.strip.setXRange(*self.region.getRegion(), padding=0))
        self.strip.sigXRangeChanged.connect(lambda _, x_range: self.region.setRegion(x_range))
        self.cursors = [pg.InfiniteLine(0, pen=pg.mkPen(SELECTED)) for _ in range(3)]
        for plot, cursor in zip((self.strip, self.lane, self.overview), self.cursors):
            plot.addItem(cursor, ignoreBounds=True)
        for plot in (self.strip, self.lane):  # each PlotWidget has a scene of its own
            plot.scene().sigMouseClicked.connect(lambda event, plot=plot: self._clicked(plot, event))
        self.overview.scene().sigMouseClicked.connect(self._centre_window)
        self.strip.scene().sigMouseMoved.connect(self._hover)
        self.column_title = QLabel("Click a column to compare both models' top tokens there.", wordWrap=True)
        self.float_top = TopList("float")
        self.quant_top = TopList("quantized")

    def _plot(self, left: str = "", height: int = 0) -> pg.PlotWidget:
        """Left axes of one width, so the x-linked columns line up; a lane (height given) has no y ticks."""
        plot = pg.PlotWidget()
        if left:
            plot.setLabel("left", left)
        if height:
            plot.setMaximumHeight(height)
            plot.getAxis("left").setTicks([[]])
        plot.getAxis("left").setWidth(AXIS_WIDTH)
        plot.getAxis("left").enableAutoSIPrefix(False)  # nats, not "(x0.001)"
        plot.hideButtons()
        return plot

    def _layout(self) -> None:
        message_page = QWidget()
        column = QVBoxLayout(message_page)
        column.addWidget(self.message)
        column.addWidget(self.compute_button)
        column.addWidget(self.busy)
        column.addStretch(1)
        memory = QHBoxLayout()
        memory.addWidget(self.memory, 1)
        memory.addWidget(self.release_button)
        memory.addWidget(self.recompute_button)
        tops = QHBoxLayout()
        tops.addWidget(self.float_top)
        tops.addWidget(self.quant_top)
        view_page = FillPage()
        column = QVBoxLayout(view_page)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(memory)
        column.addWidget(self.explanation)
        column.addWidget(self.summary)
        column.addWidget(self.strip, 3)
        column.addWidget(self.lane)
        column.addWidget(self.overview)
        column.addWidget(self.column_title)
        column.addLayout(tops, 2)
        self.pages = QStackedWidget()
        self.pages.addWidget(message_page)
        self.pages.addWidget(view_page)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addWidget(self.pages, 1)

    # -- API ----------------------------------------------------------------------------------
    def clear(self) -> None:
        """No drift computed (or the model changed): offer to compute it, unless there is nothing to compare."""
        self._view = None
        self.header.setText("<b>Quantization drift</b>")
        self.message.setText(NOT_QUANTIZED if self._not_quantized else EMPTY)
        self.compute_button.setVisible(not self._not_quantized)
        self.compute_button.setEnabled(True)
        self.busy.setVisible(False)
        self.pages.setCurrentIndex(0)

    def set_not_quantized(self, not_quantized: bool) -> None:
        self._not_quantized = not_quantized
        self.clear()

    def show_computing(self) -> None:
        self.message.setText(COMPUTING)
        self.compute_button.setEnabled(False)
        self.busy.setVisible(True)
        self.recompute_button.setEnabled(False)
        if self._view is None:
            self.pages.setCurrentIndex(0)
        else:  # recomputing: the old strip stays readable meanwhile
            self.summary.setText(COMPUTING)

    def show_problem(self, text: str) -> None:
        """The drift could not be computed (e.g. a float model): say why; Compute stays for a retry."""
        self.clear()
        self.message.setText(text)

    @property
    def view(self) -> QuantDriftView | None:
        """The drift on screen (None while there is none)."""
        return self._view

    def show_view(self, view: QuantDriftView) -> None:
        self._view = view
        n = len(view.kl)
        if n == 0:
            self.clear()
            self.message.setText("Nothing to compare yet: a conversation needs at least two tokens.")
            return
        self.header.setText(f"<b>Quantization drift: {quantized_kind(view.quantization)} vs "
                            f"{view.reference_dtype} reference</b>")
        self.memory.setText(f"float reference: {view.reference_bytes / 1e6:,.0f} MB in memory")
        self.release_button.setEnabled(True)
        self.recompute_button.setEnabled(True)
        self.explanation.setToolTip(f"Weights: {view.quantization}")
        self.summary.setText(self.summary_text(view))
        x = self.positions()
        kl = np.asarray(view.kl, dtype=float)
        differs = ~np.asarray(view.top1_agree, dtype=bool)
        self.kl_bars.setOpts(x=x, height=kl, brushes=[DIFFERS if d else KL_BAR for d in differs])
        self.disagree_marks.setData(x=x[differs], y=np.zeros(int(differs.sum())))
        self.overview_curve.setData(x, kl)
        top = float(kl.max()) if kl.max() > 0 else 1.0
        self.overview_marks.setData(x=x[differs], y=np.full(int(differs.sum()), -0.15 * top))
        self.overview.setYRange(-0.3 * top, top, padding=0)
        self.overview.setXRange(x[0] - 0.5, x[-1] + 0.5, padding=0)
        for plot in (self.strip, self.lane):
            plot.getViewBox().setLimits(xMin=x[0] - 1, xMax=x[-1] + 1, minXRange=5)
        self.strip.setXRange(x[max(0, n - FIRST_WINDOW)] - 0.5, x[-1] + 0.5, padding=0)
        self.pages.setCurrentIndex(1)
        self.select_column(n - 1, emit=False)

    @staticmethod
    def summary_text(view: QuantDriftView) -> str:
        differ = sum(not a for a in view.top1_agree)
        return (f"mean KL {view.mean_kl:.4f} nats · top-1 agreement {view.agreement:.1%} "
                f"({differ:,} of {len(view.kl):,} differ)")

    def positions(self) -> np.ndarray:
        """Each column's x: the absolute position of the token it predicted (column i predicts start + i + 1)."""
        view = self._view
        return np.arange(len(view.kl)) + view.start + 1 if view is not None else np.zeros(0)

    def select_column(self, i: int, emit: bool = True) -> None:
        """Show both models' top-N at column i (and mark it on the strip)."""
        view = self._view
        if view is None or not 0 <= i < len(view.kl):
            return
        position = view.start + i + 1
        for cursor in self.cursors:
            cursor.setValue(position)
        next_text = view.next_texts[i]
        self.column_title.setText(f"Position {position:,}: next “{display_text(next_text)}” (gold) · KL "
                                  f"{view.kl[i]:.4f} nats · top-1 {'agrees' if view.top1_agree[i] else 'differs'}")
        for top, ids, probs in ((self.float_top, view.float_top_ids, view.float_top_probs),
                                (self.quant_top, view.quant_top_ids, view.quant_top_probs)):
            top.show_top([view.texts.get(int(t), f"id {int(t)}") for t in ids[i]], probs[i], next_text)
        self.float_top.title.setText(f"float ({view.reference_dtype})")
        self.quant_top.title.setText(f"quantized ({quantized_kind(view.quantization)})")
        if emit:
            self.column_selected.emit(position)

    # -- mouse --------------------------------------------------------------------------------
    def _column_at(self, plot: pg.PlotWidget, scene_position) -> int | None:
        box = plot.getViewBox()
        if self._view is None or not box.sceneBoundingRect().contains(scene_position):
            return None
        i = round(box.mapSceneToView(scene_position).x()) - self._view.start - 1
        return i if 0 <= i < len(self._view.kl) else None

    def _clicked(self, plot: pg.PlotWidget, event) -> None:
        i = self._column_at(plot, event.scenePos()) if event.button() == Qt.LeftButton else None
        if i is not None:
            self.select_column(i)

    def _centre_window(self, event) -> None:
        """A click on the overview brings that part of the conversation into the strip."""
        box = self.overview.getViewBox()
        if self._view is None or not box.sceneBoundingRect().contains(event.scenePos()):
            return
        x = box.mapSceneToView(event.scenePos()).x()
        low, high = self.region.getRegion()
        self.region.setRegion((x - (high - low) / 2, x + (high - low) / 2))

    def _hover(self, scene_position) -> None:
        i = self._column_at(self.strip, scene_position)
        if i is None:
            self.strip.setToolTip("")
            return
        view = self._view
        first = {side: view.texts.get(int(ids[i][0]), "?") for side, ids in
                 (("float", view.float_top_ids), ("quantized", view.quant_top_ids))}
        self.strip.setToolTip(f"position {view.start + i + 1:,} → “{display_text(view.next_texts[i])}”: KL "
                              f"{view.kl[i]:.4f} nats; top-1 float “{display_text(first['float'])}”, quantized "
                              f"“{display_text(first['quantized'])}”")

    def _release(self) -> None:
        self.release_requested.emit()
        self.memory.setText("float reference released: computing again reloads it")
        self.release_button.setEnabled(False)
