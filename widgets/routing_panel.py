"""Expert routing of an MoE model: tokens × experts for one layer, layers × experts for the
selected token, and each expert's load over the conversation: fᵢ (share of routing slots) beside
Pᵢ (mean router probability), with the balance figure N·Σ fᵢ·Pᵢ (1.0 = balanced; a routing
collapse shows as one tall pair of bars and a figure near N). Draws StepRecords' routing and follows
the token selected in the chat (`select_step`): its row is outlined and scrolled to, and the gate plot
names it. Layers that keep a dense MLP (a MoEfied model's first layer, Qwen2-MoE's mlp_only_layers)
say so."""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QStackedLayout, QVBoxLayout, QWidget

from engine.records import StepRecord

ROW_WINDOW = 16  # token rows shown at once, each labelled (the rest scroll with the wheel or a drag)
TICK_STEPS = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128)  # labelled every n-th expert
TICK_GAP_PX = 4  # room between two expert numbers on an axis


def display_text(text: str, room: int = 7) -> str:
    """Whitespace made visible and elided to `room` characters (as the probabilities panel does: widgets
    import no other widget)."""
    shown = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"
    return shown if len(shown) <= room else shown[:room - 1] + "…"


def load_balance(probs: np.ndarray, chosen: np.ndarray, n_experts: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-expert token fraction f (share of routing slots), mean router probability P, and N·Σ fᵢ·Pᵢ."""
    if len(probs) == 0:
        return np.zeros(n_experts), np.zeros(n_experts), 0.0
    f = np.bincount(chosen.ravel(), minlength=n_experts) / chosen.size
    p = probs.mean(axis=0)
    return f, p, float(n_experts * np.sum(f * p))


def expert_ticks(n_experts: int, width_px: float, label_px: float) -> list[list[tuple[int, str]]]:
    """A tick at every expert, numbered at every step-th one where all numbers would not fit side by side
    (16 experts under the gate plot's ~150 px at 1366×768 read "9101112 1314")."""
    step = next((s for s in TICK_STEPS if n_experts / s * label_px <= width_px), TICK_STEPS[-1])
    return [[(i, str(i)) for i in range(0, n_experts, step)], [(i, "") for i in range(n_experts) if i % step]]


def set_title(plot: pg.PlotWidget, text: str) -> None:
    """A small title over the map and its colour bar both (over the map's column alone, a long one widened
    that column past a narrow dock, pushing the colour bar out)."""
    plot.setTitle(text, size="8pt")
    item = plot.getPlotItem()
    item.layout.removeItem(item.titleLabel)
    item.layout.addItem(item.titleLabel, 0, 1, 1, 5)  # the view box's column (1) to the colour bar's (5)


class PlotsPage(QWidget):
    """The plots' page. Its wrapped balance line would make it height-for-width, and Qt then takes the
    page's *preferred* height for its width (three plots' hints, ~1000 px) as the least it can have: the
    dock scrolled at 1366×768 with the gate plot off screen. The plots stretch; the plain minimum holds."""

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt's name)
        return False


class RoutingPanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.n_layers = self.n_experts = 0
        self.n_groups, self.groups_kept = 1, 0  # group-limited routing (DeepSeek-V2): set_expert_groups
        self._group_lines: list = []  # (plot, dashed line) between expert groups
        self._probs: list[dict[int, np.ndarray]] = []  # per step: layer -> router probs [E]
        self._chosen: list[dict[int, np.ndarray]] = []  # per step: layer -> chosen experts [k]
        self._gates: list[dict[int, tuple]] = []
        self._texts: list[str] = []  # per step: the token's text (the rows' labels, the gate plot's title)
        self._selected = self._selected_row = -1
        self._gates_drawn = np.zeros((0, 0))
        self._numbered: dict[int, list[int]] = {}  # id(plot) -> the experts its axis numbers
        self._setup_ui()
        self._layout()
        self.set_model_info(0, 0, 0)

    def _setup_ui(self) -> None:
        self.dense_label = QLabel("This model is dense: every token uses the same MLP, there are no experts to "
                                  "route. To watch routing, open the built-in mixture-of-experts model "
                                  "(Model panel: “SmolLM2-135M-MoE 8×top-2”).")
        self.dense_label.setWordWrap(True)  # a narrow dock must not scroll sideways to read it
        self.dense_label.setMargin(9)  # off the dock's edge (at 1366x768 it ran to the screen's last pixel)
        self.layer = QSpinBox(prefix="layer ")
        self.layer.valueChanged.connect(self._redraw)
        self.balance = QLabel("")
        self.balance.setWordWrap(True)
        self.tokens_plot = pg.PlotWidget()
        set_title(self.tokens_plot, "router probability per token (outlined: selected)")
        self.tokens_plot.setLabel("bottom", "expert")
        self.tokens_plot.invertY(True)  # the first token on top, as in the chat
        self.tokens_image = pg.ImageItem()
        self.tokens_plot.addItem(self.tokens_image)
        self.marker = pg.PlotCurveItem(pen=pg.mkPen("#e74c3c", width=2))  # the selected token's row
        self.tokens_plot.addItem(self.marker)
        self.layers_plot = pg.PlotWidget()
        self.layers_plot.setLabel("bottom", "expert")
        self.layers_plot.setLabel("left", "layer")
        self.layers_plot.invertY(True)
        self.layers_image = pg.ImageItem()
        self.layers_plot.addItem(self.layers_image)
        self.load_plot = pg.PlotWidget()
        set_title(self.load_plot, "load: f (blue) · P (orange)")
        self.load_plot.setLabel("bottom", "expert")
        self.colour_bars = []  # one per heatmap: its scale runs to the largest value shown
        for plot, image in ((self.tokens_plot, self.tokens_image), (self.layers_plot, self.layers_image)):
            plot.setMenuEnabled(False)
            bar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"), interactive=False, width=10)
            bar.setImageItem(image, insert_in=plot.getPlotItem())
            self.colour_bars.append(bar)
        for plot in (self.tokens_plot, self.layers_plot, self.load_plot):  # numbers that fit the plot's width
            plot.getPlotItem().getViewBox().sigResized.connect(lambda *_: self._number_experts())

    def _layout(self) -> None:
        controls = QHBoxLayout()
        controls.addWidget(self.layer)
        controls.addWidget(self.balance, 1)
        plots = PlotsPage()
        grid = QVBoxLayout(plots)
        grid.addLayout(controls)
        grid.addWidget(self.tokens_plot, 3)  # full width: the rows need their token labels
        row = QHBoxLayout()
        row.addWidget(self.layers_plot)
        row.addWidget(self.load_plot)
        grid.addLayout(row, 2)
        self.stack = QStackedLayout(self)
        self.stack.addWidget(plots)
        self.stack.addWidget(self.dense_label)

    # -- API ----------------------------------------------------------------------------------
    def set_model_info(self, n_layers: int, n_experts: int, experts_per_token: int) -> None:
        self.n_layers, self.n_experts = n_layers, n_experts
        self.layer.setRange(0, max(n_layers - 1, 0))
        self.stack.setCurrentIndex(0 if n_experts else 1)
        self.clear()

    def set_expert_groups(self, n_groups: int, kept: int) -> None:
        """Group-limited routing (DeepSeek-V2): the experts form n_groups equal groups and each token chooses
        among its `kept` best groups (ranked by their best expert's probability). Dashed lines divide the
        groups and the balance line names the groups the selected token kept. (1, 0): plain top-k."""
        self.n_groups, self.groups_kept = (n_groups, kept) if n_groups > 1 and kept else (1, 0)
        self._redraw()

    def clear(self) -> None:
        self._probs, self._chosen, self._gates, self._texts, self._selected = [], [], [], [], -1
        self._redraw()

    def add_step(self, record: StepRecord) -> None:
        if not record.routing:
            return
        routed = {r.layer for r in record.routing}
        if not self._probs and self.layer.value() not in routed:
            self.layer.setValue(min(routed))  # e.g. a MoEfied model, whose layer 0 is dense
        self._probs.append({r.layer: np.array(r.router_probs) for r in record.routing})
        self._chosen.append({r.layer: np.array(r.expert_ids) for r in record.routing})
        self._gates.append({r.layer: (r.expert_ids, r.gate_weights) for r in record.routing})
        self._texts.append(record.text)
        self._selected = len(self._probs) - 1
        self._redraw()

    def select_step(self, index: int) -> None:
        """Follow the token selected in the chat, the index-th routed step since the last clear: its row
        outlined and scrolled to, its gate weights in the gate plot; other indexes (a step of an earlier
        request) leave the panel as it is."""
        if 0 <= index < len(self._probs):
            self._selected = index
            self._redraw()

    def selected_step(self) -> int:
        return self._selected

    # Data as plotted, for tests.
    def token_expert_matrix(self, layer: int) -> np.ndarray:
        rows = [p[layer] for p in self._probs if layer in p]
        return np.array(rows) if rows else np.zeros((0, self.n_experts))

    def load_balance(self, layer: int) -> float:
        chosen = np.array([c[layer] for c in self._chosen if layer in c])
        return load_balance(self.token_expert_matrix(layer), chosen, self.n_experts)[2]

    def expert_load(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(fᵢ, Pᵢ) of `layer` over the steps so far, as drawn in the load plot."""
        chosen = np.array([c[layer] for c in self._chosen if layer in c])
        return load_balance(self.token_expert_matrix(layer), chosen, self.n_experts)[:2]

    def gate_matrix(self) -> np.ndarray:
        """The selected step's gate weights as drawn: experts × layers (0 where an expert was not chosen)."""
        return self._gates_drawn.copy()

    def group_lines(self) -> list[float]:
        """Where dashed lines divide expert groups, on each of the three plots (empty: no groups)."""
        return [line.value() for _, line in self._group_lines]

    def kept_groups(self, step: int, layer: int) -> tuple[int, ...]:
        """The groups step `step`'s token chose its experts from at `layer` (() without group-limited routing)."""
        probs = self._probs[step].get(layer) if 0 <= step < len(self._probs) else None
        if probs is None or self.n_groups <= 1:
            return ()
        best = probs.reshape(self.n_groups, -1).max(axis=1)  # each group's best expert
        return tuple(sorted(np.argsort(-best, kind="stable")[:self.groups_kept].tolist()))

    def is_dense_message_shown(self) -> bool:
        return self.stack.currentIndex() == 1

    # -- drawing ------------------------------------------------------------------------------
    def _redraw(self) -> None:
        if not self.n_experts:
            return
        layer = self.layer.value()
        matrix = self.token_expert_matrix(layer)
        # Colour scale 0..largest value shown: a MoEfied router's probabilities (and its gate weights,
        # all ~1/E) sit far below 1 and would be one dark colour on a 0..1 scale.
        top = float(matrix.max()) if len(matrix) else 1.0
        self.tokens_image.setImage(matrix.T if len(matrix) else np.zeros((self.n_experts, 1)), levels=(0, max(top, 1e-6)))
        # centre cell i on coordinate i, so integer ticks name experts and tokens
        self.tokens_image.setRect(QRectF(-0.5, -0.5, self.n_experts, max(len(matrix), 1)))
        self._follow_selected_row(layer, len(matrix))
        gates = np.zeros((self.n_experts, max(self.n_layers, 1)))
        if self._selected >= 0:
            for l, (ids, weights) in self._gates[self._selected].items():
                gates[list(ids), l] = weights
        self._gates_drawn = gates
        set_title(self.layers_plot, f"gate weights of<br>«{display_text(self._texts[self._selected], 8)}» "
                  f"(step {self._selected})" if self._selected >= 0 else "gate weights<br>of the selected token")
        self.layers_image.setImage(gates, levels=(0, max(float(gates.max()), 1e-6)))
        self.layers_image.setRect(QRectF(-0.5, -0.5, self.n_experts, max(self.n_layers, 1)))
        for bar, image in zip(self.colour_bars, (self.tokens_image, self.layers_image)):
            bar.setLevels(tuple(image.levels))
        self._number_experts()
        step = max(1, self.n_layers // 12)
        self.layers_plot.getAxis("left").setTicks([[(i, str(i)) for i in range(0, self.n_layers, step)]])
        self.layers_plot.setRange(xRange=(-0.5, self.n_experts - 0.5), yRange=(-0.5, max(self.n_layers, 1) - 0.5),
                                  padding=0)
        chosen = np.array([c[layer] for c in self._chosen if layer in c])
        f, p, balance = load_balance(matrix, chosen, self.n_experts)
        self.load_plot.clear()
        x = np.arange(self.n_experts)
        self.load_plot.addItem(pg.BarGraphItem(x=x - 0.18, height=f, width=0.34, brush="#2e86de"))
        self.load_plot.addItem(pg.BarGraphItem(x=x + 0.18, height=p, width=0.34, brush="#f39c12"))
        self.load_plot.setXRange(-0.6, self.n_experts - 0.4, padding=0)
        if not self._probs:  # before the first token: say what will show, not a balance of nothing
            self.balance.setText("No tokens yet: send a message, and each generated token's experts appear here.")
        elif not len(matrix):
            self.balance.setText(f"layer {layer} has a dense MLP: no experts, nothing routed")
        else:
            self.balance.setText(f"layer {layer}: {len(matrix)} tokens · load balance N·Σf·P = {balance:.2f} "
                                 f"(1.00 = even; {self.n_experts} = all on one expert)" + self._groups_text(layer))
        self._draw_groups()

    def _number_experts(self) -> None:
        for plot in (self.tokens_plot, self.layers_plot, self.load_plot):
            axis = plot.getAxis("bottom")
            metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
            label_px = metrics.horizontalAdvance(str(max(self.n_experts - 1, 0))) + TICK_GAP_PX
            ticks = expert_ticks(self.n_experts, plot.getPlotItem().getViewBox().width(), label_px)
            axis.setTicks(ticks)
            self._numbered[id(plot)] = [i for i, _ in ticks[0]]

    def expert_numbers(self, plot: pg.PlotWidget) -> list[int]:
        """The experts numbered on a plot's axis (for tests)."""
        return self._numbered.get(id(plot), [])

    def _groups_text(self, layer: int) -> str:
        if self.n_groups <= 1:
            return ""
        kept = self.kept_groups(self._selected, layer)
        return (f" · group-limited: {self.n_groups} groups of {self.n_experts // self.n_groups} (dashed lines), each "
                f"token picks among its {self.groups_kept} best"
                + (f"; the selected token kept groups {', '.join(map(str, kept))}" if kept else ""))

    def _draw_groups(self) -> None:
        """Dashed lines between expert groups on the three plots (none without group-limited routing)."""
        for plot, line in self._group_lines:
            plot.removeItem(line)
        self._group_lines = []
        if self.n_groups <= 1 or not self.n_experts:
            return
        size = self.n_experts // self.n_groups
        for plot in (self.tokens_plot, self.layers_plot, self.load_plot):
            for g in range(1, self.n_groups):
                line = pg.InfiniteLine(pos=g * size - 0.5, angle=90, pen=pg.mkPen("#e0e0e0", width=1, style=Qt.DashLine))
                plot.addItem(line)
                self._group_lines.append((plot, line))

    def _follow_selected_row(self, layer: int, rows: int) -> None:
        """Label the token rows with their text, outline the selected token's and scroll to it."""
        steps = [i for i, p in enumerate(self._probs) if layer in p]  # row r is step steps[r]
        self.tokens_plot.getAxis("left").setTicks([[(r, display_text(self._texts[i])) for r, i in enumerate(steps)]])
        row = steps.index(self._selected) if self._selected in steps else -1
        box = self.tokens_plot.getPlotItem().getViewBox()
        box.setLimits(xMin=-0.5, xMax=self.n_experts - 0.5, yMin=-0.5, yMax=max(rows, 1) - 0.5)
        last = max(row, 0) if row >= 0 else rows - 1
        first = max(0, last - ROW_WINDOW + 1)
        box.setRange(xRange=(-0.5, self.n_experts - 0.5), yRange=(first - 0.5, max(first + ROW_WINDOW, 1) - 0.5),
                     padding=0)
        self._selected_row = row
        if row < 0:
            self.marker.setData([], [])
        else:
            x0, x1, y0, y1 = -0.5, self.n_experts - 0.5, row - 0.5, row + 0.5
            self.marker.setData([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])

    def selected_row(self) -> int:
        """The outlined row of the tokens heatmap (-1: none)."""
        return self._selected_row
