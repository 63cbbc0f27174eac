"""The selected step's next-token distribution through the sampler chain, drawn as small multiples: the
model's own distribution, then one compact bar plot per active stage (constraint, penalties, temperature,
top-k, top-p, min-p, typical-p) in the order the chain applies them, each with the engine's one-line reason,
the tokens that stage removed drawn in red at the height they had before it, the chosen token in yellow;
the cumulative curve entering top-p with its threshold, where top-p actually cuts. Stages that are off are
listed on one grey line. Draws DistributionView records only; the reasons and counts come from the engine.
"""
from __future__ import annotations

import html
import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPalette
from PySide6.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSizePolicy,
                               QVBoxLayout, QWidget)

from engine.records import DistributionView, StageView

STAGES = ("raw", "constraint", "penalties", "temperature", "top_k", "top_p", "min_p", "typical_p")
RAW, KEPT, CHOSEN, REMOVED = "#93aed0", "#2e86de", "#f1c40f", "#e74c3c"
STAGE_WORDS = {"top_k": "top-k", "top_p": "top-p", "min_p": "min-p", "typical_p": "typical-p",
               "constraint": "the constraint", "penalties": "the penalties"}
LEGEND = (("model", RAW), ("after the stage", KEPT), ("chosen", CHOSEN), ("removed by the stage", REMOVED))
GAP_PX = 6  # between two token labels on the x axis
MAX_STRIDE = 4  # label at least every fourth candidate
PLOT_PX, AXIS_PX, LEFT_PX = 48, 20, 34  # a stage's plot height, its token axis, the probability axis' width


def display_text(text: str) -> str:
    """Make whitespace visible on an axis: spaces, newlines and tabs would otherwise read as nothing."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def y_ticks(top: float) -> list[tuple[float, str]]:
    """0 and one round value near the top: a 48 px plot has room for two labels, not five."""
    if top <= 0:
        return [(0.0, "0")]
    step = 10 ** math.floor(math.log10(top))
    mark = math.floor(top / step) * step
    return [(0.0, "0"), (mark, f"{mark:.{max(0, -math.floor(math.log10(step)))}f}")]


def _small(label: QLabel, grey: bool = False) -> QLabel:
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 0.9)
    label.setFont(font)
    if grey:
        label.setStyleSheet("color: grey")
    return label


class CompactPlot(pg.PlotWidget):
    """A plot that asks for little room: the scroll area sizes the list by its rows' size hints, and a
    PlotWidget's own (384×480) would make every stage a screen tall."""

    def sizeHint(self) -> QSize:
        return QSize(200, self.minimumHeight())

    def minimumSizeHint(self) -> QSize:
        return QSize(60, 30)


def _plot() -> pg.PlotWidget:
    """A compact plot that neither zooms nor catches the wheel (the list scrolls), with a narrow left axis."""
    plot = CompactPlot()
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    font = plot.font()
    font.setPointSizeF(font.pointSizeF() * 0.85)
    for side in ("left", "bottom"):
        plot.getAxis(side).setStyle(tickFont=font, tickLength=-4)
    plot.getAxis("left").setWidth(LEFT_PX)
    plot.getViewBox().setDefaultPadding(0)
    plot.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    return plot


class StageRow(QWidget):
    """One stage: its reason line over its bar plot. Bars are made once and given new data per step."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.reason = _small(QLabel(wordWrap=True, textFormat=Qt.RichText))
        self.plot = _plot()
        # Only the model's plot, always first and always shown, names the tokens: the stages below share
        # its x positions, so a token's fate reads straight down.
        if name != "raw":
            self.plot.hideAxis("bottom")
        else:  # the first token's label may reach under the probability axis rather than vanish
            self.plot.getAxis("bottom").setStyle(hideOverlappingLabels=False)
        self.plot.setMinimumHeight(PLOT_PX + (AXIS_PX if name == "raw" else 0))
        empty = {"x": np.zeros(0), "height": np.zeros(0), "width": 0.7}
        self.kept = pg.BarGraphItem(**empty, brush=RAW if name == "raw" else KEPT)  # brush: the legend's colour
        self.removed = pg.BarGraphItem(**empty, brush=REMOVED)
        self.plot.addItem(self.kept)
        self.plot.addItem(self.removed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.reason)
        layout.addWidget(self.plot, 1)


class ProbabilitiesPanel(QWidget):
    alternative_chosen = Signal(int)  # token id: "continue from this step with this token instead"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._view: DistributionView | None = None
        self._heights: dict[str, np.ndarray] = {}
        self._removed: dict[int, str] = {}
        self._shown: tuple[str, ...] = ()  # the stages drawn as plots, in order
        self._cumulative: tuple[float, ...] | None = None  # the curve as drawn
        self._ticks: list[str] = []  # the x axis's labels as drawn
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        # Word-wrapped, and the alternatives' box may be narrower than its longest item: neither a step's
        # title nor a long token may widen the dock (and so the window).
        self.title = QLabel("No step selected: click a generated token in the chat.", wordWrap=True)
        self.entropy = _small(QLabel(wordWrap=True))
        self.swatches: dict[str, QLabel] = {}
        for name, colour in LEGEND:
            swatch = QLabel(autoFillBackground=True)
            swatch.setFixedSize(10, 10)
            palette = swatch.palette()
            palette.setColor(QPalette.Window, QColor(colour))
            swatch.setPalette(palette)
            self.swatches[name] = swatch
        self.rows = {name: StageRow(name) for name in STAGES}
        self.bars.getViewBox().sigResized.connect(lambda *_: self._label_ticks())
        for row in self.rows.values():
            row.plot.scene().sigMouseMoved.connect(lambda pos, row=row: self._hover(row, pos))
        self.off = _small(QLabel(wordWrap=True), grey=True)
        # The curve entering top-p: where it first reaches p is where top-p cuts (after it, the curve of the
        # survivors reaches 1 at once and says nothing about the cut).
        self.cumulative_note = _small(QLabel(wordWrap=True))
        self.cumulative = _plot()
        self.cumulative.setMinimumHeight(PLOT_PX + AXIS_PX)
        self.cumulative.setMaximumHeight(130)
        self.cumulative.setYRange(0, 1.05, padding=0)
        self.cumulative.getAxis("left").setTicks([[(0, "0"), (0.5, "0.5"), (1, "1")]])
        self.curve = self.cumulative.plot([], [], pen=pg.mkPen(KEPT, width=2), symbol="o", symbolSize=5)
        self.top_p_line = pg.InfiniteLine(1.0, angle=0, pen=pg.mkPen(REMOVED, style=Qt.DashLine))
        self.cut_line = pg.InfiniteLine(0, angle=90, pen=pg.mkPen("grey", style=Qt.DotLine))
        self.cumulative.addItem(self.top_p_line)
        self.cumulative.addItem(self.cut_line)
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
        legend = QHBoxLayout()
        legend.setSpacing(4)
        for name, swatch in self.swatches.items():
            legend.addWidget(swatch)
            legend.addWidget(_small(QLabel(name)))
            legend.addSpacing(6)
        legend.addStretch(1)
        stages = QWidget()
        column = QVBoxLayout(stages)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        for name, row in self.rows.items():
            column.addWidget(row, 1)
            row.setVisible(name == "raw")
            if name == "top_p":
                column.addWidget(self.cumulative_note)
                column.addWidget(self.cumulative, 1)
        column.addWidget(self.off)
        self.cumulative_note.setVisible(False)
        self.cumulative.setVisible(False)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(stages)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.entropy)
        layout.addLayout(fork)
        layout.addLayout(legend)
        layout.addWidget(scroll, 1)

    # -- API ----------------------------------------------------------------------------------
    def clear(self) -> None:
        self._view, self._heights, self._removed, self._cumulative = None, {}, {}, None
        empty = {"x": np.zeros(0), "height": np.zeros(0)}
        for row in self.rows.values():
            row.kept.setOpts(**empty)
            row.removed.setOpts(**empty)
        self._show_rows(("raw",))
        self.off.setText("")
        self.entropy.setText("")
        self._ticks = []
        self.bars.getAxis("bottom").setTicks([[]])
        self.curve.setData([], [])
        self.cumulative.setVisible(False)
        self.cumulative_note.setVisible(False)

    def show_distribution(self, view: DistributionView) -> None:
        if view == self._view:  # the streaming reply asks again for a step that did not change
            return
        previous, self._view = self._view, view
        self._removed = {}
        for stage in view.stages:
            for token in stage.removed:
                self._removed.setdefault(token, stage.name)
        self._draw_stages(view, previous)
        self._draw_cumulative(view)
        self.alternative.clear()
        for token, text, p in zip(view.token_ids, view.token_texts, view.stages[0].probs):
            if token != view.chosen_token_id:
                self.alternative.addItem(f"“{display_text(text)}”  (p = {p:.3f})", token)
        self.continue_button.setEnabled(self.alternative.count() > 0)
        chosen = view.token_texts[view.token_ids.index(view.chosen_token_id)] \
            if view.chosen_token_id in view.token_ids else f"id {view.chosen_token_id}"
        final = view.stages[-1]
        remain = (f"{final.kept} of {view.stored} stored tokens remain" if view.stored else
                  f"{sum(p > 0 for p in final.probs)} of {len(final.probs)} shown tokens remain")
        # The settings on the sliders may now remove the token the model chose with the settings it had.
        gone = self._removed.get(view.chosen_token_id)
        note = f" · under these settings {STAGE_WORDS.get(gone, gone)} would remove it" if gone else ""
        self.title.setText(f"Step {view.step_index}: chose “{display_text(chosen)}” · {remain}{note}")
        before = view.entropy_before if view.stored else view.entropy
        self.entropy.setText(f"entropy before sampler {max(0.0, before):.2f} nats → "
                             f"after {max(0.0, view.entropy):.2f} nats")

    def _continue(self) -> None:
        if self.alternative.currentIndex() >= 0:
            self.alternative_chosen.emit(int(self.alternative.currentData()))

    @property
    def bars(self) -> pg.PlotWidget:
        """The plot that names the tokens: the model's own distribution, on top."""
        return self.rows["raw"].plot

    # What was drawn, for tests (they assert on data, not pixels).
    def bar_heights(self) -> dict[str, np.ndarray]:
        """"raw", "final", and each drawn stage's bars by its name."""
        return {k: v.copy() for k, v in self._heights.items()}

    def removed_by_stage(self) -> dict[int, str]:
        return dict(self._removed)

    def stage_plots(self) -> tuple[str, ...]:
        return self._shown

    def reasons(self) -> dict[str, str]:
        return {name: self.rows[name].reason.text() for name in self._shown}

    def swatch_colours(self) -> dict[str, QColor]:
        return {name: s.palette().color(QPalette.Window) for name, s in self.swatches.items()}

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.curve.getData()
        return (np.zeros(0), np.zeros(0)) if x is None else (x.copy(), y.copy())

    def tick_labels(self) -> list[str]:
        """The x axis's labels as drawn (elided), for tests."""
        return list(self._ticks)

    # -- drawing ------------------------------------------------------------------------------
    def _draw_stages(self, view: DistributionView, previous: DistributionView | None) -> None:
        shown = tuple(s.name for s in view.stages if s.active and s.name in self.rows)
        self._show_rows(shown)
        x = np.arange(len(view.token_ids))
        top = max((max(s.probs, default=0.0) for s in view.stages if s.active), default=1.0)
        same_tokens = previous is not None and (previous.token_ids, previous.chosen_token_id) == \
            (view.token_ids, view.chosen_token_id)
        before = np.array(view.stages[0].probs)
        self._heights = {"raw": before, "final": np.array(view.stages[-1].probs)}
        chosen = np.array(view.token_ids) == view.chosen_token_id
        for stage in view.stages:
            probs = np.array(stage.probs)
            row = self.rows.get(stage.name)
            if row is not None and stage.active:
                self._heights[stage.name] = probs
                old = previous.stage(stage.name) if same_tokens else None
                if old != stage or not old.active:  # streaming the same step: most stages did not change
                    cut = np.isin(view.token_ids, stage.removed)
                    kept_colour = RAW if stage.name == "raw" else KEPT
                    row.kept.setOpts(x=x, height=probs, brushes=[CHOSEN if c else kept_colour for c in chosen])
                    row.removed.setOpts(x=x[cut], height=before[cut])  # at the height they had before it
                    row.reason.setText(self._reason_html(stage))
                    row.reason.setToolTip(f"{stage.reason}\nentropy after it: {stage.entropy:.2f} nats")
                row.plot.setXRange(-0.5, len(x) - 0.5, padding=0)
                row.plot.setYRange(0, top * 1.08 or 1.0, padding=0)
                row.plot.getAxis("left").setTicks([y_ticks(top)])
            before = probs
        off = [s for s in view.stages[1:] if not s.active]
        self.off.setText("off: " + ", ".join(self._off_text(s) for s in off) if off else "")
        self.off.setToolTip("\n".join(s.reason for s in off))
        self._label_ticks()

    @staticmethod
    def _reason_html(stage: StageView) -> str:
        reason = stage.reason or stage.label
        name, sep, rest = reason.partition(":") if stage.name != "top_k" else reason.partition(" kept")
        return f"<b>{html.escape(name)}</b>{html.escape(sep + rest)}"

    @staticmethod
    def _off_text(stage: StageView) -> str:
        why = stage.reason.partition(": ")[2]
        return stage.label if why in ("off", "") else f"{stage.label} ({why})"

    def _show_rows(self, shown: tuple[str, ...]) -> None:
        """Show a plot per active stage."""
        if shown != self._shown:
            for name, row in self.rows.items():
                row.setVisible(name in shown)
            self._shown = shown

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

    def _hover(self, row: StageRow, position) -> None:
        """The candidate under the mouse as the plot's tooltip: its whole text and what this stage did to it."""
        view, box = self._view, row.plot.getViewBox()
        i = round(box.mapSceneToView(position).x()) if box.sceneBoundingRect().contains(position) else -1
        if view is None or not 0 <= i < len(view.token_ids) or row.name not in self._heights:
            row.plot.setToolTip("")
            return
        index = self._shown.index(row.name)
        before = self._heights[self._shown[index - 1]][i] if index else None
        after = self._heights[row.name][i]
        token = view.token_ids[i]
        what = f"model {after:.4f}" if before is None else f"{before:.4f} → {after:.4f} after {row.name.replace('_', '-')}"
        removed = self._removed.get(token)
        row.plot.setToolTip(f"“{display_text(view.token_texts[i])}” (id {token}): {what}"
                            + (f", removed by {removed.replace('_', '-')}" if removed else ""))

    def _draw_cumulative(self, view: DistributionView) -> None:
        stage = view.stage("top_p")
        on = stage is not None and stage.active and bool(view.top_p_curve)
        self.cumulative.setVisible(on)
        self.cumulative_note.setVisible(on)
        if not on:
            return
        curve = view.top_p_curve
        shown = min(len(curve), max(len(view.token_ids), view.top_p_kept + 4))
        if curve[:shown] != self._cumulative:
            self._cumulative = curve[:shown]
            x = np.arange(1, shown + 1)
            self.curve.setData(x, np.array(self._cumulative),
                               symbolBrush=[KEPT if i <= view.top_p_kept else REMOVED for i in x])
            self.cumulative.setXRange(0.5, shown + 0.5, padding=0)
        self.top_p_line.setValue(view.top_p)
        self.cut_line.setValue(view.top_p_kept + 0.5)
        self.cumulative_note.setText(f"<b>top-p {view.top_p:g}</b> on the sum entering it: "
                                     f"the first {view.top_p_kept} reach the dashed line")
        self.cumulative_note.setToolTip("The distribution entering top-p, sorted most likely first and summed. "
                                        "Top-p keeps tokens until the sum reaches p (blue) and cuts the rest (red).")
