"""The RoPE panel on LongRoPE (both factor lists drawn, the legend naming the second), partial rotary and NoPE
layers: views built from the engine's own inv_freq rule, as a Phi-3 / SmolLM3 layer uses it."""
import math

import numpy as np
import pyqtgraph as pg

from engine.config import RopeScaling
from engine.layers.rope import rope_inv_freq
from engine.records import RopeView
from widgets.rope_panel import RopePanel

ROTATED, HEAD, THETA, TRAINED = 8, 16, 10_000.0, 4096
RULE = RopeScaling(rope_type="longrope", factor=32.0, original_max_position=TRAINED,
                   short_factor=(1.0, 1.2, 1.9, 3.0), long_factor=(1.0, 4.0, 20.0, 40.0))


def longrope_view(context: int, nope=()) -> RopeView:
    active, attention = rope_inv_freq(ROTATED, THETA, RULE, 32 * TRAINED, seq_len=context)
    other_len = TRAINED if context > TRAINED else TRAINED + 1  # the list this context does not select
    other, _ = rope_inv_freq(ROTATED, THETA, RULE, 32 * TRAINED, seq_len=other_len)
    base, _ = rope_inv_freq(ROTATED, THETA, RopeScaling(), TRAINED)
    return RopeView(scaling="longrope", factor=32.0, head_dim=ROTATED, theta=THETA, trained_context=TRAINED,
                    context=context, inv_freq=tuple(active.tolist()), base_inv_freq=tuple(base.tolist()),
                    attention_scaling=attention, other_inv_freq=tuple(other.tolist()), nope_layers=nope,
                    head_width=HEAD)


def legend(panel) -> set[str]:
    return {label.text for _, label in panel.legend.items}


def test_longrope_draws_both_lists_and_says_which_applies(qtbot):
    panel = RopePanel()
    qtbot.addWidget(panel)
    long_view = longrope_view(32 * TRAINED)
    panel.show_view(long_view)
    np.testing.assert_allclose(panel.scaled_curve.yData, 2 * math.pi / np.array(long_view.inv_freq), rtol=1e-12)
    np.testing.assert_allclose(panel.other_curve.yData, 2 * math.pi / np.array(long_view.other_inv_freq), rtol=1e-12)
    assert legend(panel) == {"scaled", "unscaled", "short factors"}
    pen = pg.mkPen(panel.other_curve.opts["pen"])
    swatch = next(pg.mkPen(s.item.opts["pen"]) for s, label in panel.legend.items if label.text == "short factors")
    assert swatch.color().name() == pen.color().name() and swatch.style() == pen.style()
    caption = panel.caption.text()
    assert caption.startswith("LongRoPE") and "the long factors apply (× 1.00–40.00)" in caption
    assert f"× {long_view.attention_scaling:.3f}" in caption and "head_dim 16 (8 rotated)" in panel.title.text()
    assert "first 8 of each 16-wide head" in panel.turns.text()
    panel.show_view(longrope_view(TRAINED, nope=(3, 7)))
    assert "the short factors apply (× 1.00–3.00)" in panel.caption.text()
    assert legend(panel) == {"scaled", "unscaled", "long factors"}
    assert "Layers 3, 7 skip RoPE (NoPE)" in panel.turns.text()
    panel.clear()
    assert legend(panel) == {"scaled", "unscaled"}
    assert panel.other_curve.yData is None or len(panel.other_curve.yData) == 0
