"""The selected step's next-token distribution: the model's raw probabilities next to what the
sampler chain leaves, tokens coloured by the stage that removed them, the chosen token marked, and
the cumulative curve with the top-p line. Draws DistributionView records only."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.records import DistributionView

STAGE_COLOURS = {"constraint": "#6d4c41",  # structured output: tokens the grammar refused
                 "penalties": "#8e44ad", "temperature": "#7f8c8d", "top_k": "#e67e22", "top_p": "#c0392b",
                 "min_p": "#16a085", "typical_p": "#2c3e50"}
RAW, KEPT, CHOSEN = "#b0c4de", "#2e86de", "#f1c40f"
GAP_PX = 6  # between two token labels on the x axis
MAX_STRIDE = 4  # label at least every fourth candidate


def display_text(text: str) -> str:
    """Make whitespace visible on an axis: spaces, newlines and tabs would otherwise read as nothing."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


class ProbabilitiesPanel(QWidget):
    alternative_chosen = Signal(int)  # token id: "continue from this step with this token instead"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._view: DistributionView | None = None
        self._heights: dict[str, np.ndarray] = {}
        self._removed: dict[int, str] = {}
        self._cumulative: np.ndarray | None = None  # the curve as drawn
        self._ticks: list[str] = []  # the x axis's labels as drawn
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        # Word-wrapped, and the alternatives' box may be narrower than its longest item: neither a step's
        # title nor a long token may widen the dock (and so the window).
        self.title = QLabel("No step selected: click a generated token in the chat.", wordWrap=True)
        self.bars = pg.PlotWidget()
        self.bars.setLabel("left", "probability")
        self.bars.getAxis("left").enableAutoSIPrefix(False)  # probabilities, not "x0.001" units
        self.legend = self.bars.addLegend(offset=(-10, 10))
        # The plot items are made once and given new data per step: clearing and re-adding them (and the
        # legend's entries) cost the GUI thread ~10 ms a redraw, which the decode loop waited for.
        empty = {"x": np.zeros(0), "height": np.zeros(0), "width": 0.4}
        self.raw_item = pg.BarGraphItem(**empty, brush=RAW, name="model (raw)")
        self.final_item = pg.BarGraphItem(**empty, brush=KEPT, name="after sampler")  # brush: the legend's swatch
        self.removed_items = {stage: pg.BarGraphItem(**empty, brush=colour, name=f"removed by {stage.replace('_', '-')}")
                              for stage, colour in STAGE_COLOURS.items()}
        self.bars.addItem(self.raw_item)
        self.bars.addItem(self.final_item)
        for item in self.removed_items.values():
            self.bars.addItem(item)
            self.legend.removeItem(item)  # listed only while a stage removed something
        self._listed: set[str] = set()
        self.bars.setLabel("bottom", "candidate tokens (chosen one in yellow)")
        # Token labels are elided to their bar's width, so they never run together; the whole token (and its
        # probabilities) is the plot's tooltip where the mouse is.
        self.bars.getViewBox().sigResized.connect(lambda *_: self._label_ticks())
        self.bars.getViewBox().sigXRangeChanged.connect(lambda *_: self._label_ticks())
        self.bars.scene().sigMouseMoved.connect(self._hover)
        self.cumulative = pg.PlotWidget()
        self.cumulative.setLabel("left", "cumulative")
        self.cumulative.setLabel("bottom", "tokens, most likely first (after the sampler)")
        self.cumulative.setMaximumHeight(170)
        self.cumulative.setYRange(0, 1.05)
        self.curve = self.cumulative.plot([], [], pen=pg.mkPen(KEPT, width=2), symbol="o", symbolSize=5)
        self.top_p_line = pg.InfiniteLine(1.0, angle=0, pen=pg.mkPen("#c0392b", style=Qt.DashLine), label="",
                                          labelOpts={"position": 0.9})
        self.cumulative.addItem(self.top_p_line)
        self.top_p_line.setVisible(False)
        self.alternative = QComboBox(sizeAdjustPolicy=QComboBox.AdjustToMinimumContentsLengthWithIcon,
                                     minimumContentsLength=6)
        self.continue_button = QPushButton("Continue with this token",
                                           toolTip="Continue the reply from this step with the chosen token instead")
        self.continue_button.clicked.connect(self._continue)
        self.continue_button.setEnabled(False)

    def _layout(self) -> None:
        fork = QHBoxLayout()
        fork.addWidget(self.alternative, 1)
        fork.addWidget(self.continue_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addLayout(fork)
        layout.addWidget(self.bars, 3)
        layout.addWidget(self.cumulative, 1)

    # -- API ----------------------------------------------------------------------------------
    def clear(self) -> None:
        self._view, self._heights, self._removed = None, {}, {}
        empty = {"x": np.zeros(0), "height": np.zeros(0)}
        for item in (self.raw_item, self.final_item, *self.removed_items.values()):
            item.setOpts(**empty)
        self._list_stages(set())
        self._ticks = []
        self.bars.getAxis("bottom").setTicks([[]])
        self.curve.setData([], [])
        self._cumulative = None
        self.top_p_line.setVisible(False)

    def show_distribution(self, view: DistributionView) -> None:
        self._view = view
        raw = np.array(view.stages[0].probs)
        final = np.array(view.stages[-1].probs)
        self._removed = {}
        for stage in view.stages:
            for token in stage.removed:
                self._removed.setdefault(token, stage.name)
        self._draw_bars(view, raw, final)
        self.alternative.clear()
        for token, text, p in zip(view.token_ids, view.token_texts, raw):
            if token != view.chosen_token_id:
                self.alternative.addItem(f"“{display_text(text)}”  (p = {p:.3f})", token)
        self.continue_button.setEnabled(self.alternative.count() > 0)
        self._draw_cumulative(final, view.top_p)
        chosen = view.token_texts[view.token_ids.index(view.chosen_token_id)] \
            if view.chosen_token_id in view.token_ids else f"id {view.chosen_token_id}"
        entropy = max(0.0, view.entropy)  # a certain step: rounding (or -0.0) would read "-0.00"
        self.title.setText(f"Step {view.step_index}: chose “{display_text(chosen)}” · entropy {entropy:.2f} nats · "
                           f"{int((final > 0).sum())} of {len(final)} shown tokens remain")

    def _continue(self) -> None:
        if self.alternative.currentIndex() >= 0:
            self.alternative_chosen.emit(int(self.alternative.currentData()))

    # What was actually plotted, for tests (they assert on data, not pixels).
    def bar_heights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._heights.items()}

    def removed_by_stage(self) -> dict[int, str]:
        return dict(self._removed)

    # -- drawing ------------------------------------------------------------------------------
    def _draw_bars(self, view: DistributionView, raw: np.ndarray, final: np.ndarray) -> None:
        x = np.arange(len(view.token_ids))
        self._heights = {"raw": raw, "final": final}
        self.raw_item.setOpts(x=x - 0.2, height=raw)
        self.final_item.setOpts(x=x + 0.2, height=final,
                                brushes=[CHOSEN if t == view.chosen_token_id else KEPT for t in view.token_ids])
        present = set()
        for stage, item in self.removed_items.items():
            idx = [i for i, t in enumerate(view.token_ids) if self._removed.get(t) == stage]
            if idx or len(item.opts["height"]):  # an empty item stays empty without redrawing
                # a removed token's raw bar is drawn in the colour of the stage that cut it
                item.setOpts(x=x[idx] - 0.2, height=raw[idx])
            if idx:
                present.add(stage)
        self._list_stages(present)
        self._label_ticks()

    def tick_labels(self) -> list[str]:
        """The x axis's labels as drawn (elided), for tests."""
        return list(self._ticks)

    def _label_ticks(self) -> None:
        """Label every candidate whose text fits its bar's width, else every second (third, ...) one, each
        elided to the room it has: labels never run together; the tooltip names every bar whole."""
        texts = [display_text(t) for t in (self._view.token_texts if self._view is not None else ())]
        axis = self.bars.getAxis("bottom")
        low, high = self.bars.getViewBox().viewRange()[0]
        slot = self.bars.getViewBox().width() / max(high - low, 1e-9)  # pixels per bar position
        metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
        widths = sorted(metrics.horizontalAdvance(t) + GAP_PX for t in texts)
        stride = min(MAX_STRIDE, max(1, math.ceil(widths[len(widths) // 2] / max(slot, 1.0)))) if texts else 1
        room = max(0, int(stride * slot) - GAP_PX)
        ticks = [metrics.elidedText(t, Qt.ElideRight, room) if i % stride == 0 else "" for i, t in enumerate(texts)]
        if ticks != self._ticks:  # an axis regenerates its text on every setTicks
            self._ticks = ticks
            axis.setTicks([list(enumerate(ticks))])

    def _hover(self, position) -> None:
        """The candidate under the mouse as the plot's tooltip: its whole text and probabilities."""
        view = self._view
        if view is None or not self.bars.getViewBox().sceneBoundingRect().contains(position):
            self.bars.setToolTip("")
            return
        i = round(self.bars.getViewBox().mapSceneToView(position).x())
        if not 0 <= i < len(view.token_ids):
            self.bars.setToolTip("")
            return
        raw, final = self._heights.get("raw", ()), self._heights.get("final", ())
        removed = self._removed.get(view.token_ids[i])
        self.bars.setToolTip(f"“{display_text(view.token_texts[i])}” (id {view.token_ids[i]}): model {raw[i]:.4f}, "
                             f"after the sampler {final[i]:.4f}" + (f", removed by {removed}" if removed else ""))

    def _list_stages(self, present: set[str]) -> None:
        """The legend names the stages that removed a shown token, and only those."""
        for stage in self._listed - present:
            self.legend.removeItem(self.removed_items[stage])
        for stage in STAGE_COLOURS:
            if stage in present - self._listed:
                self.legend.addItem(self.removed_items[stage], self.removed_items[stage].opts["name"])
        self._listed = set(present)

    def _draw_cumulative(self, final: np.ndarray, top_p: float) -> None:
        cumulative = np.cumsum(np.sort(final)[::-1])
        if self._cumulative is None or not np.array_equal(cumulative, self._cumulative):  # greedy: always one-hot
            self._cumulative = cumulative
            self.curve.setData(np.arange(1, len(cumulative) + 1), cumulative)
        self.top_p_line.setVisible(top_p < 1.0)
        if top_p < 1.0:
            self.top_p_line.setValue(top_p)
            self.top_p_line.label.setFormat(f"top-p {top_p:.2f}")
