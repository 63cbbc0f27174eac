"""The attention panel reads: token text on both axes, a hover readout of the cell under the mouse,
heads grouped by their KV group, the selected query followed, a colour bar; fed real AttentionViews'
shape (synthetic weights, so each cell's value is known)."""
import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QPointF

from engine.records import AttentionView
from widgets.attention_panel import AttentionPanel, elided, sharpness

TEXTS = ["<s>", "The", " sky", " is", " blue", " because", " air", " scatters", " light", "\n"]


def random_view(layer=3, first=4, queries=5, kv_group=(0, 1, 0, 1), seed=0) -> AttentionView:
    """Causal rows that sum to 1: query row i (position first + i) sees positions 0..first + i."""
    rng = np.random.default_rng(seed)
    weights = rng.random((len(kv_group), queries, first + queries)).astype(np.float32)
    for i in range(queries):
        weights[:, i, first + i + 1:] = 0
    weights /= weights.sum(axis=2, keepdims=True)
    return AttentionView(layer, first, kv_group, weights)


@pytest.fixture
def panel(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.set_model_info(9, 4, 2)
    panel.set_token_labels(TEXTS)
    panel.layer.setValue(3)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_hovering_a_cell_reads_its_query_key_and_weight(panel, qtbot):
    view = random_view()
    panel.show_view(view)
    panel.head.activated.emit(panel.head_choices.index(("head", 2)))
    row, key = 3, 5  # query position 7 (" scatters") over key 5 (" because")
    box = panel.plot.getPlotItem().getViewBox()
    at = panel.plot.mapFromScene(box.mapViewToScene(QPointF(key, row)))
    qtbot.mouseMove(panel.plot.viewport(), at)
    expected = f"{view.weights[2, row, key]:.3f}"
    assert panel.readout.text() == f"query «␣scatters» (pos 7) → key «␣because» (pos 5): {expected}"
    assert panel.plot.toolTip() == panel.readout.text()  # the whole text also on hover


def test_heads_are_grouped_by_their_kv_group(panel):
    view = random_view(kv_group=(0, 1, 0, 1))  # interleaved: the grouping must come from the view
    panel.show_view(view)
    assert panel.strip.groups == [(0, [0, 2]), (1, [1, 3])]
    assert panel.head.count() == len(panel.head_choices)
    assert panel.head_choices == [("auto",), ("all",), ("group", 0), ("head", 0), ("head", 2), ("group", 1), ("head", 1), ("head", 3)]
    panel.strip.picked.emit(("group", 1))  # a group's name in the strip: the mean of its heads
    assert panel.shown_heads() == (1, 3)
    drawn = panel.matrix()
    assert np.nan_to_num(drawn) == pytest.approx(view.weights[[1, 3]].mean(axis=0))
    assert np.isnan(drawn[0, 5]) and not np.isnan(drawn[0, 4])  # position 5 is later than query 4


def test_the_sharpest_head_is_shown_by_default_and_said_why(panel):
    view = random_view()
    view.weights[1] = 0
    view.weights[1, np.arange(5), np.arange(4, 9)] = 1.0  # head 1 looks at one token (itself) every time
    panel.show_view(view)
    assert panel.shown_heads() == (1,) and int(np.argmax(sharpness(view.weights))) == 1
    assert "head 1 (KV group 1), the sharpest here" in panel.note.text()


def test_both_axes_are_labelled_with_the_token_texts(panel):
    panel.show_view(random_view(first=4, queries=5))
    queries, keys = panel.axis_labels()
    assert queries == TEXTS[4:9] and keys == TEXTS[:9]
    rows = panel.rows_axis
    drawn = rows.tickValues(*sorted(rows.range), rows.height())[0][1]
    assert rows.tickStrings(drawn, 1, 1) == [elided(TEXTS[4 + v]) for v in drawn]
    bottom = panel.keys_axis
    drawn = bottom.tickValues(*bottom.range, bottom.width())[0][1]
    assert bottom.tickStrings(drawn, 1, 1) == [elided(TEXTS[v]) for v in drawn] and drawn


def test_select_query_highlights_its_row_or_asks_for_a_view_that_has_it(panel, qtbot):
    panel.show_view(random_view(first=4, queries=5))
    assert panel.selected_row() == 4  # the newest query until one is selected
    panel.select_query(6)
    assert panel.selected_row() == 2 and panel.rows_axis.marked == 2
    xs, ys = panel.marker.getData()
    assert min(ys) == pytest.approx(1.5) and max(ys) == pytest.approx(2.5)
    y_range = panel.plot.getPlotItem().getViewBox().viewRange()[1]
    assert y_range[0] <= 2 <= y_range[1]
    assert "(pos 6) produced «␣scatters»" in panel.note.text()
    with qtbot.waitSignal(panel.wanted) as asked:
        panel.select_query(2)  # a prompt position: not among this view's queries
    assert asked.args == [3] and panel.wanted_query() == 2
    panel.show_view(random_view(first=1, queries=8))  # the app's answer covers it
    assert panel.wanted_query() is None and panel.selected_row() == 1


def test_a_colour_bar_reads_the_weights(panel):
    panel.show_view(random_view())
    bar = panel.colour_bar
    assert isinstance(bar, pg.ColorBarItem) and bar.levels() == (0, 1)
    assert panel.plot.getPlotItem().layout.itemAt(2, 5) is bar and bar.isVisible()  # beside the map
    assert [ref() for ref in bar.img_list] == [panel.image] and list(panel.image.levels) == [0, 1]


def test_a_new_model_opens_a_third_of_the_way_in(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(30, 9, 3)
    assert panel.current_layer() == 10 and panel.strip.groups == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6, 7, 8])]
