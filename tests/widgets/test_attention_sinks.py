"""Attention sinks in the attention panel (gpt-oss): each row's share that went to the learned sink is
drawn as its own column beside the map, row for row, for the heads shown; absent for models without."""
import numpy as np
import pytest
from PySide6.QtCore import QPointF

from engine.records import AttentionView
from widgets.attention_panel import AttentionPanel

TEXTS = [f"w{i}" for i in range(10)]


def sink_view(first=4, queries=5, heads=4) -> AttentionView:
    """Causal rows whose positions take 1 - sink and whose sink takes a known share (0.1 * head + row / 50)."""
    rng = np.random.default_rng(0)
    weights = rng.random((heads, queries, first + queries)).astype(np.float32)
    sinks = np.array([[0.1 * h + i / 50 for i in range(queries)] for h in range(heads)], dtype=np.float32)
    for i in range(queries):
        weights[:, i, first + i + 1:] = 0
    weights *= (1 - sinks)[..., None] / weights.sum(axis=2, keepdims=True)
    return AttentionView(1, first, (0, 0, 1, 1), weights, sinks)


@pytest.fixture
def panel(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(480, 560)
    panel.set_model_info(2, 4, 2)
    panel.set_token_labels(TEXTS)
    panel.layer.setValue(1)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_the_sink_is_its_own_column_for_the_heads_shown(panel):
    view = sink_view()
    panel.show_view(view)
    assert panel.sink_plot.isVisible()
    panel.choose(("head", 2))
    np.testing.assert_allclose(panel.sink_column(), view.sinks[2], rtol=1e-6)
    matrix = panel.matrix()
    np.testing.assert_allclose(np.nansum(matrix, axis=1) + panel.sink_column(), 1, atol=1e-5)  # rows whole again
    panel.choose(("group", 0))
    np.testing.assert_allclose(panel.sink_column(), view.sinks[:2].mean(axis=0), rtol=1e-6)
    assert "The sink took" in panel.note.text()
    assert panel.sink_readout(4).startswith("query «w8» (pos 8) → the sink: ")


def test_the_sink_column_scrolls_with_the_map_row_for_row(panel, qtbot):
    panel.show_view(sink_view())
    qtbot.wait(50)  # the layouts settle
    map_box, sink_box = panel.plot.getPlotItem().getViewBox(), panel.sink_plot.getPlotItem().getViewBox()
    np.testing.assert_allclose(map_box.viewRange()[1], sink_box.viewRange()[1])
    for row in range(5):  # each query row sits at the same height on the screen in both
        map_y = map_box.mapViewToScene(QPointF(0, row)).y() + panel.plot.mapToGlobal(panel.plot.rect().topLeft()).y()
        sink_y = sink_box.mapViewToScene(QPointF(0, row)).y() + panel.sink_plot.mapToGlobal(
            panel.sink_plot.rect().topLeft()).y()
        assert abs(map_y - sink_y) <= 1.5, row


def test_no_sink_column_without_sinks(panel):
    panel.show_view(sink_view())
    view = sink_view()
    panel.show_view(AttentionView(view.layer, view.query_start, view.kv_group, view.weights))
    assert not panel.sink_plot.isVisible() and panel.sink_column() is None
    assert "sink" not in panel.note.text()


def test_the_sink_column_touches_the_map_and_the_colour_bar_moves_past_it(panel, qtbot):
    """Seen at 1366x768: the colour bar stood between the map and the sink column, cutting the sinks off
    from the rows they complete; now the column is the map's last and the bar comes after it."""
    panel.show_view(sink_view())
    qtbot.wait(50)

    def left_right(widget, item):
        rect = item.sceneBoundingRect()
        x0 = widget.mapToGlobal(widget.rect().topLeft()).x()
        return x0 + rect.left(), x0 + rect.right()

    _, map_right = left_right(panel.plot, panel.plot.getPlotItem().getViewBox())
    sink_left, sink_right = left_right(panel.sink_plot, panel.sink_plot.getPlotItem().getViewBox())
    bar_left, _ = left_right(panel.sink_plot, panel.sink_colour_bar)
    assert 0 <= sink_left - map_right <= 16 and bar_left >= sink_right - 1
    assert panel.sink_colour_bar.isVisible() and not panel.colour_bar.isVisible()
    view = sink_view()
    panel.show_view(AttentionView(view.layer, view.query_start, view.kv_group, view.weights))  # no sinks: back
    assert panel.plot.getPlotItem().layout.itemAt(2, 5) is panel.colour_bar and panel.colour_bar.isVisible()
