"""The selected step's next-token distribution: the model's raw probabilities next to what the
sampler chain leaves, tokens coloured by the stage that removed them, the chosen token marked, and
the cumulative curve with the top-p line. Draws DistributionView records only."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.records import DistributionView

STAGE_COLOURS = {"constraint": "#6d4c41",  # structured output: tokens the grammar refused
                 "penalties": "#8e44ad", "temperature": "#7f8c8d", "top_k": "#e67e22", "top_p": "#c0392b",
                 "min_p": "#16a085", "typical_p": "#2c3e50"}
RAW, KEPT, CHOSEN = "#b0c4de", "#2e86de", "#f1c40f"


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
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        # Word-wrapped, and the alternatives' box may be narrower than its longest item: neither a step's
        # title nor a long token may widen the dock (and so the window).
        self.title = QLabel("No step selected: click a generated token in the chat.", wordWrap=True)
        self.bars = pg.PlotWidget()
        self.bars.setLabel("left", "probability")
        self.bars.getAxis("left").enableAutoSIPrefix(False)  # probabilities, not "x0.001" units
        self.bars.addLegend(offset=(-10, 10))
        self.cumulative = pg.PlotWidget()
        self.cumulative.setLabel("left", "cumulative")
        self.cumulative.setLabel("bottom", "tokens, most likely first (after the sampler)")
        self.cumulative.setMaximumHeight(170)
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
        self.bars.clear()
        self.cumulative.clear()

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
        self.bars.clear()
        x = np.arange(len(view.token_ids))
        self._heights = {"raw": raw, "final": final}
        self.bars.addItem(pg.BarGraphItem(x=x - 0.2, height=raw, width=0.4, brush=RAW, name="model (raw)"))
        brushes = [CHOSEN if t == view.chosen_token_id else KEPT for t in view.token_ids]
        self.bars.addItem(pg.BarGraphItem(x=x + 0.2, height=final, width=0.4, brushes=brushes,
                                          name="after sampler"))
        for stage, colour in STAGE_COLOURS.items():
            idx = [i for i, t in enumerate(view.token_ids) if self._removed.get(t) == stage]
            if idx:  # a removed token's raw bar is outlined in the colour of the stage that cut it
                self.bars.addItem(pg.BarGraphItem(x=x[idx] - 0.2, height=raw[idx], width=0.4, brush=colour,
                                                  name=f"removed by {stage.replace('_', '-')}"))
        axis = self.bars.getAxis("bottom")
        axis.setTicks([[(i, display_text(t)[:7]) for i, t in enumerate(view.token_texts)]])
        self.bars.setLabel("bottom", "candidate tokens (chosen one in yellow)")

    def _draw_cumulative(self, final: np.ndarray, top_p: float) -> None:
        self.cumulative.clear()
        ordered = np.sort(final)[::-1]
        self.cumulative.plot(np.arange(1, len(ordered) + 1), np.cumsum(ordered), pen=pg.mkPen(KEPT, width=2),
                             symbol="o", symbolSize=5)
        if top_p < 1.0:
            self.cumulative.addItem(pg.InfiniteLine(top_p, angle=0, pen=pg.mkPen("#c0392b", style=Qt.DashLine),
                                                    label=f"top-p {top_p:.2f}", labelOpts={"position": 0.9}))
        self.cumulative.setYRange(0, 1.05)
