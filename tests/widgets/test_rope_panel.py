"""The RoPE panel draws a RopeView: wavelengths 2π/inv_freq (scaled and unscaled), the context lines, a legend
that matches its curves, a caption true of the numbers. Views are built here from the engine's own
inv_freq rules (engine/layers/rope.py), so the numbers are the ones a real layer uses."""
import math

import numpy as np
import pyqtgraph as pg
import pytest

from engine.config import RopeScaling
from engine.layers.rope import rope_inv_freq
from engine.records import RopeView
from widgets.rope_panel import RopePanel, pair_ranges

HEAD_DIM, THETA, TRAINED = 64, 100_000.0, 8192


def rope_view(scaling: str, factor: float = 4.0, context: int = 4 * TRAINED) -> RopeView:
    rule = RopeScaling(rope_type=scaling, factor=factor, original_max_position=TRAINED)
    scaled, attention = rope_inv_freq(HEAD_DIM, THETA, rule, TRAINED, seq_len=context)
    base, _ = rope_inv_freq(HEAD_DIM, THETA, RopeScaling(), TRAINED)
    return RopeView(scaling=scaling, factor=factor, head_dim=HEAD_DIM, theta=THETA, trained_context=TRAINED,
                    context=context, inv_freq=tuple(scaled.tolist()), base_inv_freq=tuple(base.tolist()),
                    attention_scaling=attention)


@pytest.mark.parametrize("scaling", ["default", "linear", "dynamic", "yarn", "llama3"])
def test_wavelengths_and_context_lines_are_the_views(qtbot, scaling):
    panel = RopePanel()
    qtbot.addWidget(panel)
    view = rope_view(scaling)
    panel.show_view(view)
    scaled = 2 * math.pi / np.array(view.inv_freq)
    unscaled = 2 * math.pi / np.array(view.base_inv_freq)
    np.testing.assert_allclose(panel.scaled_curve.yData, scaled, rtol=1e-12)
    np.testing.assert_allclose(panel.unscaled_curve.yData, unscaled, rtol=1e-12)
    np.testing.assert_array_equal(panel.scaled_curve.xData, np.arange(HEAD_DIM // 2))
    lines = panel.context_lines()
    assert lines["trained"] == pytest.approx(TRAINED) and lines["current"] == pytest.approx(4 * TRAINED)
    assert panel.trained_line.isVisible() and panel.current_line.isVisible()
    assert scaling.replace("default", "no scaling") in panel.title.text()


def test_legend_swatches_are_the_curves_pens(qtbot):
    panel = RopePanel()
    qtbot.addWidget(panel)
    panel.show_view(rope_view("yarn"))
    swatches = {label.text: pg.mkPen(sample.item.opts["pen"]) for sample, label in panel.legend.items}
    assert set(swatches) == {"scaled", "unscaled"}
    for name, curve in (("scaled", panel.scaled_curve), ("unscaled", panel.unscaled_curve)):
        pen = pg.mkPen(curve.opts["pen"])
        assert swatches[name].color().name() == pen.color().name() and swatches[name].style() == pen.style()
        assert pg.mkBrush(curve.opts["symbolBrush"]).color().name() == pen.color().name()


def test_captions_say_what_each_scaling_does_and_which_pairs_never_turn(qtbot):
    panel = RopePanel()
    qtbot.addWidget(panel)
    panel.show_view(rope_view("yarn"))
    unscaled = 2 * math.pi / np.array(rope_view("yarn").base_inv_freq)
    slow = np.flatnonzero(unscaled > TRAINED)
    assert f"pairs {slow[0]}–{slow[-1]} never complete a turn within the trained 8,192" in panel.turns.text()
    caption = panel.caption.text()
    assert caption.startswith("YaRN") and "stretched × 4" in caption and "kept (pairs 0–" in caption
    assert f"× {rope_view('yarn').attention_scaling:.3f}" in caption
    panel.show_view(rope_view("linear", factor=2))
    assert "every wavelength × 2" in panel.caption.text()
    panel.show_view(rope_view("dynamic", context=TRAINED // 2))
    assert "nothing changes yet" in panel.caption.text()
    assert panel.context_lines()["current"] == pytest.approx(TRAINED // 2)
    panel.show_view(rope_view("dynamic"))
    assert "θ ≈" in panel.caption.text() and "nothing changes" not in panel.caption.text()
    panel.show_view(rope_view("llama3", factor=8))
    assert panel.caption.text().startswith("Llama 3") and "× 8" in panel.caption.text()
    panel.show_view(rope_view("default", factor=1, context=TRAINED))
    assert "coincide" in panel.caption.text() and "trained = current context" in panel.trained_line.label.format
    assert not panel.current_line.isVisible()  # the same context: one line, one label
    panel.clear()
    assert panel.scaled_curve.yData is None or len(panel.scaled_curve.yData) == 0
    assert not panel.trained_line.isVisible() and "No model" in panel.title.text()


def test_hover_reads_out_the_pair_under_the_mouse(qtbot):
    panel = RopePanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.show()
    qtbot.waitExposed(panel)
    view = rope_view("yarn")
    panel.show_view(view)
    box = panel.plot.getViewBox()
    pair = 30
    scaled = 2 * math.pi / view.inv_freq[pair]
    panel._hover(box.mapViewToScene(pg.Point(pair + 0.2, math.log10(scaled))))
    unscaled = 2 * math.pi / view.base_inv_freq[pair]
    assert panel.readout.text() == (f"pair 30: wavelength unscaled {unscaled:,.1f}, scaled {scaled:,.1f} positions, "
                                    f"×{scaled / unscaled:.2f}")
    assert panel.plot.toolTip() == panel.readout.text()


def test_pair_ranges_reads_as_runs():
    assert pair_ranges([]) == "no pair"
    assert pair_ranges([31]) == "pair 31"
    assert pair_ranges([3, 5, 6, 7]) == "pairs 3, 5–7"
