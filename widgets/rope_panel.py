"""What the chosen RoPE scaling does to each dimension pair: its wavelength (positions per full turn) scaled
beside unscaled on a log axis, against the trained and the current context, with a plain-language caption.
Draws RopeView records only; the app sends one whenever the model panel's RoPE choice changes."""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine.records import RopeView

SCALED, UNSCALED = "#2e86de", "#e67e22"
TRAINED, CURRENT = "#16a085", "#c0392b"
OTHER = "#8e44ad"  # LongRoPE's factor list that the current context does not use
SAME = 1e-3  # relative difference under which a pair counts as kept (or as stretched by exactly the factor)
EMPTY = "No model loaded: the RoPE view shows once a model is open."


def pair_ranges(pairs: list[int]) -> str:
    """[3, 5, 6, 7] -> 'pairs 3, 5–7': the runs a reader can take in."""
    if not pairs:
        return "no pair"
    runs, first, last = [], pairs[0], pairs[0]
    for pair in pairs[1:]:
        if pair != last + 1:
            runs.append((first, last))
            first = pair
        last = pair
    runs.append((first, last))
    runs = [f"{a}" if a == b else f"{a}–{b}" for a, b in runs]
    return ("pair " if len(pairs) == 1 else "pairs ") + ", ".join(runs)


def describe_scaling(view: RopeView, ratio: np.ndarray) -> str:
    """What the scaling does, in words, with the pairs each part applies to (read off the numbers, so the
    caption is true of this model whatever the rule's parameters)."""
    f = view.factor
    kept = [i for i, r in enumerate(ratio) if abs(r - 1) < SAME]
    stretched = [i for i, r in enumerate(ratio) if abs(r - f) < SAME * f and abs(r - 1) >= SAME]
    between = [i for i in range(len(ratio)) if i not in kept and i not in stretched]
    if view.scaling == "linear":
        return (f"Linear: every wavelength × {f:g}. Position p is rotated as position p/{f:g} was, so "
                f"{f * view.trained_context:,.0f} tokens reuse the angles the model saw in {view.trained_context:,}.")
    if view.scaling == "dynamic":
        if view.context <= view.trained_context:
            return (f"Dynamic NTK: a larger base θ once the context exceeds the trained {view.trained_context:,} "
                    f"tokens; at {view.context:,} it does not, so nothing changes yet.")
        # inv_freq[1] = base^(-2/d): the base the rule chose for this context
        base = view.inv_freq[1] ** (-view.head_dim / 2) if len(view.inv_freq) > 1 else view.theta
        return (f"Dynamic NTK: past the trained {view.trained_context:,} tokens the base θ grows with the context; "
                f"at {view.context:,} θ ≈ {base:,.0f} (from {view.theta:,.0f}): slow pairs stretch most, fast "
                f"ones hardly.")
    if view.scaling == "yarn":
        return (f"YaRN: long wavelengths stretched × {f:g} ({pair_ranges(stretched)}), short ones kept "
                f"({pair_ranges(kept)}), a ramp between ({pair_ranges(between)}); attention logits × "
                f"{view.attention_scaling:.3f}.")
    if view.scaling == "longrope":
        past = view.context > view.trained_context
        return (f"LongRoPE: each pair's wavelength × its own searched factor, from one list while a sequence fits "
                f"in the trained {view.trained_context:,} tokens and another once it is longer. At {view.context:,} "
                f"the {'long' if past else 'short'} factors apply (× {ratio.min():.2f}–{ratio.max():.2f}); the "
                f"{'short' if past else 'long'} ones are drawn dotted. A sequence switches when it passes "
                f"{view.trained_context:,} tokens (its cached keys are then recomputed with the long ones). "
                f"Rotated q and k × {view.attention_scaling:.3f}, √(1 + ln {f:g} / ln {view.trained_context:,}) "
                f"unless the model sets it.")
    if view.scaling == "llama3":
        return (f"Llama 3: wavelength bands against the trained context: long ones × {f:g} "
                f"({pair_ranges(stretched)}), short ones kept ({pair_ranges(kept)}), blended between "
                f"({pair_ranges(between)}).")
    return "No scaling: the model's own frequencies (the two curves coincide)."


def describe_layout(view: RopeView) -> str:
    """Partial rotary, NoPE layers and layers on their own RoPE base, in words ('' when every layer rotates
    whole heads with one table)."""
    parts = []
    if view.head_width:
        parts.append(f"RoPE turns the first {view.head_dim} of each {view.head_width}-wide head's dims; the other "
                     f"{view.head_width - view.head_dim} carry no position.")
    if view.nope_layers:
        layers = ", ".join(str(i) for i in view.nope_layers)
        parts.append(f"Layer{'s' if len(view.nope_layers) > 1 else ''} {layers} skip RoPE (NoPE): there attention "
                     f"sees order only through the causal mask and what earlier layers wrote.")
    if view.local_layers:
        parts.append(f"The sliding-window layers ({layer_ranges(view.local_layers)}) rotate with their own base "
                     f"θ = {view.local_theta:,.0f} and no scaling; the curves are the other layers'.")
    return " ".join(parts)


def layer_ranges(layers) -> str:
    """(0, 1, 2, 3, 4, 6, 7) -> '0–4, 6–7'."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in runs)


class RopePanel(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._view: RopeView | None = None
        self.wavelengths = {"scaled": np.zeros(0), "unscaled": np.zeros(0)}  # as plotted, for tests
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.title = QLabel(EMPTY, wordWrap=True)
        # A choice in the Model panel is a load option: drawn at once, applied only when a model is opened.
        self.preview = QLabel("", wordWrap=True, styleSheet="color: #b9770e;")
        self.preview.hide()
        self.caption = QLabel("", wordWrap=True)
        self.turns = QLabel("", wordWrap=True)
        self.plot = pg.PlotWidget()
        self.plot.setLogMode(y=True)
        self.plot.setLabel("left", "wavelength (positions per turn)")
        self.plot.setLabel("bottom", "dimension pair (fast → slow)")
        self.plot.setMouseEnabled(x=False, y=False)  # 32–64 pairs fit; panning would only lose the lines
        self.plot.hideButtons()
        self.legend = self.plot.addLegend(offset=(10, 10))
        self.unscaled_curve = self.plot.plot([], [], pen=pg.mkPen(UNSCALED, width=2, style=Qt.DashLine),
                                             symbol="o", symbolSize=4, symbolPen=None, symbolBrush=UNSCALED,
                                             name="unscaled")
        self.scaled_curve = self.plot.plot([], [], pen=pg.mkPen(SCALED, width=2), symbol="o", symbolSize=4,
                                           symbolPen=None, symbolBrush=SCALED, name="scaled")
        # LongRoPE's other factor list; in the legend only while a view has one
        self.other_curve = self.plot.plot([], [], pen=pg.mkPen(OTHER, width=1.5, style=Qt.DotLine), symbol="o",
                                          symbolSize=3, symbolPen=None, symbolBrush=OTHER)
        # InfiniteLine knows nothing of log mode: its value is log10(positions), set in show_view.
        self.trained_line = pg.InfiniteLine(0, angle=0, pen=pg.mkPen(TRAINED, width=1.5, style=Qt.DashLine),
                                            label="", labelOpts={"position": 0.05, "color": TRAINED,
                                                                 "anchors": [(0, 1), (0, 1)]})
        self.current_line = pg.InfiniteLine(0, angle=0, pen=pg.mkPen(CURRENT, width=1.5, style=Qt.DotLine),
                                            label="", labelOpts={"position": 0.05, "color": CURRENT,
                                                                 "anchors": [(0, 0), (0, 0)]})
        for line in (self.trained_line, self.current_line):
            self.plot.addItem(line, ignoreBounds=False)
            line.setVisible(False)
        self.readout = QLabel("Hover over a pair for its wavelengths.", wordWrap=True)
        self.plot.scene().sigMouseMoved.connect(self._hover)

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.preview)
        layout.addWidget(self.caption)
        layout.addWidget(self.turns)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.readout)

    # -- API ----------------------------------------------------------------------------------
    def set_preview(self, text: str) -> None:
        """'' : the view is the loaded model's; else why it is not (a choice that applies on reopening)."""
        self.preview.setText(text)
        self.preview.setVisible(bool(text))

    def clear(self) -> None:
        self._view = None
        self.wavelengths = {"scaled": np.zeros(0), "unscaled": np.zeros(0)}
        self.scaled_curve.setData([], [])
        self.unscaled_curve.setData([], [])
        self._show_other(None)
        for line in (self.trained_line, self.current_line):
            line.setVisible(False)
        self.title.setText(EMPTY)
        self.caption.setText("")
        self.turns.setText("")
        self.readout.setText("Hover over a pair for its wavelengths.")

    def show_computing(self) -> None:
        """Nothing to show meanwhile: a RoPE view takes well under a millisecond to compute."""

    def show_problem(self, text: str) -> None:
        """The choice cannot be drawn (e.g. a scaling this model's config cannot take): say why."""
        self.clear()
        self.title.setText(text)

    @property
    def view(self) -> RopeView | None:
        """The view on screen (None while there is none)."""
        return self._view

    def show_view(self, view: RopeView) -> None:
        self._view = view
        scaled = 2 * math.pi / np.asarray(view.inv_freq, dtype=np.float64)
        unscaled = 2 * math.pi / np.asarray(view.base_inv_freq, dtype=np.float64)
        self.wavelengths = {"scaled": scaled, "unscaled": unscaled}
        pairs = np.arange(len(scaled))
        self.unscaled_curve.setData(pairs, unscaled)
        self.scaled_curve.setData(pairs, scaled)
        self._show_other(view)
        self._place_lines(view)
        name = "no scaling" if view.scaling == "default" else f"{view.scaling} ×{view.factor:g}"
        width = f"{view.head_width} ({view.head_dim} rotated)" if view.head_width else f"{view.head_dim}"
        self.title.setText(f"<b>RoPE: {name}</b> · head_dim {width} · θ {view.theta:,.0f} · "
                           f"{len(scaled)} pairs")
        self.caption.setText(describe_scaling(view, scaled / unscaled))
        slow = [int(i) for i in np.flatnonzero(unscaled > view.trained_context)]
        slow_scaled = [int(i) for i in np.flatnonzero(scaled > view.context)]
        turns = (f"Unscaled, {pair_ranges(slow)} never complete a turn within the trained "
                 f"{view.trained_context:,} tokens; scaled, {pair_ranges(slow_scaled)} never do within "
                 f"the current {view.context:,}.")
        self.turns.setText(" ".join(filter(None, (turns, describe_layout(view)))))
        self.readout.setText("Hover over a pair for its wavelengths.")
        self.plot.getViewBox().autoRange()

    def _show_other(self, view: RopeView | None) -> None:
        self.legend.removeItem(self.other_curve)
        if view is None or not view.other_inv_freq:
            self.wavelengths.pop("other", None)
            self.other_curve.setData([], [])
            return
        other = 2 * math.pi / np.asarray(view.other_inv_freq, dtype=np.float64)
        self.wavelengths["other"] = other
        self.other_curve.setData(np.arange(len(other)), other)
        past = view.context > view.trained_context
        self.legend.addItem(self.other_curve, "short factors" if past else "long factors")

    def context_lines(self) -> dict[str, float]:
        """Where the two horizontal lines sit, in positions (for tests)."""
        return {"trained": 10 ** self.trained_line.value(), "current": 10 ** self.current_line.value()}

    # -- drawing ------------------------------------------------------------------------------
    def _place_lines(self, view: RopeView) -> None:
        self.trained_line.setValue(math.log10(max(view.trained_context, 1)))
        self.current_line.setValue(math.log10(max(view.context, 1)))
        same = view.context == view.trained_context
        self.trained_line.setVisible(True)
        self.current_line.setVisible(not same)  # one line, one label: two would print over each other
        # (a hidden line's label ignores setFormat: the lines are shown first)
        self.trained_line.label.setFormat(f"trained {'= current ' if same else ''}context {view.trained_context:,}")
        self.current_line.label.setFormat(f"current context {view.context:,}")
        # Labels above the higher line and below the lower one, so they never overlap.
        above, below = [(0, 1), (0, 1)], [(0, 0), (0, 0)]
        higher = view.context > view.trained_context
        self.current_line.label.anchors = above if higher else below
        self.trained_line.label.anchors = below if higher else above
        for line in (self.trained_line, self.current_line):
            line.label.valueChanged()

    def hover_text(self, pair: int) -> str:
        scaled, unscaled = self.wavelengths["scaled"][pair], self.wavelengths["unscaled"][pair]
        return (f"pair {pair}: wavelength unscaled {unscaled:,.1f}, scaled {scaled:,.1f} positions, "
                f"×{scaled / unscaled:.2f}")

    def _hover(self, position) -> None:
        """The pair under the mouse, read out below the plot and as its tooltip."""
        box = self.plot.getViewBox()
        if self._view is None or not box.sceneBoundingRect().contains(position):
            self.plot.setToolTip("")
            return
        pair = round(box.mapSceneToView(position).x())
        if not 0 <= pair < len(self.wavelengths["scaled"]):
            self.plot.setToolTip("")
            return
        self.readout.setText(self.hover_text(pair))
        self.plot.setToolTip(self.readout.text())
