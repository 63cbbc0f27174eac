"""Sliding-window and global layers in the attention panel (Gemma 2/3 mix them): the layer picker names
each layer's kind, keys outside a query's window are drawn as unseen (not as weight 0), a dashed edge marks
the window, and hovering an unseen key says why."""
import numpy as np
import pytest
from PySide6.QtCore import QPointF

from engine.records import AttentionView
from widgets.attention_panel import AttentionPanel

TEXTS = [f"w{i}" for i in range(12)]
WINDOW = 3


def windowed_view(layer=1, first=6, queries=6, window=WINDOW) -> AttentionView:
    """Rows that sum to 1 over each query's last `window` positions only, as a sliding layer computes them."""
    rng = np.random.default_rng(0)
    weights = rng.random((2, queries, first + queries)).astype(np.float32)
    for i in range(queries):
        position = first + i
        weights[:, i, position + 1:] = 0
        if window is not None:
            weights[:, i, :max(0, position - window + 1)] = 0
    weights /= weights.sum(axis=2, keepdims=True)
    return AttentionView(layer, first, (0, 0), weights, window=window)


@pytest.fixture
def panel(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(480, 560)
    panel.set_model_info(3, 2, 1)
    panel.set_layer_windows((WINDOW, WINDOW, None))
    panel.set_token_labels(TEXTS)
    panel.layer.setValue(1)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_the_layer_picker_names_sliding_and_global_layers(panel):
    assert panel.layer_kind(0) == f"sliding window of {WINDOW}" and panel.layer_kind(2) == "global"
    assert panel.layer.suffix() == f" · sliding {WINDOW}"
    panel.layer.setValue(2)
    assert panel.layer.suffix() == " · global"
    panel.set_model_info(3, 2, 1)  # another model: nothing known about its windows yet
    assert panel.layer.suffix() == "" and panel.layer_kind(0) == ""


def test_keys_outside_the_window_are_unseen_and_the_edge_is_drawn(panel, qtbot):
    view = windowed_view()
    panel.show_view(view)
    matrix = panel.matrix()
    for row in range(view.num_queries):
        position = view.query_start + row
        seen = ~np.isnan(matrix[row])
        assert seen.nonzero()[0].tolist() == list(range(position - WINDOW + 1, position + 1))
    assert "sliding window" in panel.note.text() and f"last {WINDOW} positions" in panel.note.text()
    xs, _ = panel.window_edge.getData()
    assert len(xs) > 0 and min(xs) == pytest.approx(view.query_start - WINDOW + 0.5)
    row, key = 2, 1  # query position 8 cannot see position 1 through a window of 3
    box = panel.plot.getPlotItem().getViewBox()
    panel.whole.setChecked(True)  # every key on screen
    qtbot.mouseMove(panel.plot.viewport(), panel.plot.mapFromScene(box.mapViewToScene(QPointF(key, row))))
    assert panel.readout.text() == ("key pos 1 is outside query pos 8's sliding window (its last 3 positions): "
                                    "it cannot be seen")


def test_a_global_layer_draws_no_edge(panel):
    panel.layer.setValue(2)
    panel.show_view(windowed_view(layer=2, window=None))
    xs, _ = panel.window_edge.getData()
    assert xs is None or len(xs) == 0
    assert "global" in panel.note.text()
    assert not np.isnan(panel.matrix()[0, :7]).any()
