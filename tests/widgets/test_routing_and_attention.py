"""Routing and attention panels, fed real StepRecords and AttentionViews."""
import numpy as np
import pyqtgraph as pg
import pytest

from engine.records import AttentionView, RoutingRecord, StepRecord
from widgets.attention_panel import AttentionPanel
from widgets.routing_panel import RoutingPanel


def routed(step: int, expert: int, n_experts: int = 4, layers: int = 2) -> StepRecord:
    probs = np.full(n_experts, 0.1 / (n_experts - 1))
    probs[expert] = 0.9
    routing = tuple(RoutingRecord(l, (expert, (expert + 1) % n_experts), (0.9, 0.1), tuple(probs)) for l in range(layers))
    return StepRecord(0, step, token_id=step, text=f"t{step}", prob=0.5, routing=routing)


def test_routing_matrix_layer_switch_and_balance(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    for i in range(8):
        panel.add_step(routed(i, i % 4))
    m = panel.token_expert_matrix(0)
    assert m.shape == (8, 4) and m[1, 1] == pytest.approx(0.9)
    assert panel.load_balance(0) == pytest.approx(1.0)  # every expert as busy as the others
    panel.layer.setValue(1)
    assert panel.token_expert_matrix(1).shape == (8, 4)
    panel.clear()
    for i in range(8):
        panel.add_step(routed(i, 2))  # collapse: every token on expert 2 (and 3 second)
    assert panel.load_balance(0) > 1.5 and not panel.is_dense_message_shown()


def test_selecting_a_step_shows_its_gate_weights(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    for i in range(4):
        panel.add_step(routed(i, i))  # step i: expert i (0.9) and expert i+1 (0.1), in both layers
    assert panel.selected_step() == 3 and panel.gate_matrix()[3].tolist() == pytest.approx([0.9, 0.9])
    panel.select_step(1)
    gates = panel.gate_matrix()  # experts x layers
    assert panel.selected_step() == 1 and "gate weights of<br>«t1»" in panel.layers_plot.plotItem.titleLabel.text
    assert "(step 1)" in panel.layers_plot.plotItem.titleLabel.text
    assert gates[1].tolist() == pytest.approx([0.9, 0.9]) and gates[2].tolist() == pytest.approx([0.1, 0.1])
    assert gates[0].sum() == 0 and gates[3].sum() == 0
    panel.select_step(-1)  # a step this panel does not hold (an earlier request's): nothing changes
    assert panel.selected_step() == 1


def test_routing_follows_the_selected_step(qtbot):
    """The gate plot shows exactly the selected step's RoutingRecords; its row is outlined and in view."""
    rng = np.random.default_rng(1)
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.set_model_info(6, 8, 2)
    steps = []
    for i in range(40):
        routing = []
        for layer in range(6):
            probs = rng.dirichlet(np.ones(8))
            top = np.argsort(-probs)[:2]
            gates = probs[top] / probs[top].sum()
            routing.append(RoutingRecord(layer, tuple(map(int, top)), tuple(map(float, gates)), tuple(map(float, probs))))
        steps.append(StepRecord(0, i, token_id=i, text=f" w{i}", prob=0.5, routing=tuple(routing)))
        panel.add_step(steps[-1])
    panel.select_step(7)
    gates = panel.gate_matrix()  # experts x layers
    for r in steps[7].routing:
        expected = np.zeros(8)
        expected[list(r.expert_ids)] = r.gate_weights
        assert gates[:, r.layer] == pytest.approx(expected)
    assert "gate weights of<br>«␣w7»" in panel.layers_plot.plotItem.titleLabel.text
    assert panel.selected_row() == 7
    xs, ys = panel.marker.getData()
    assert (min(ys), max(ys)) == pytest.approx((6.5, 7.5))
    assert panel.tokens_plot.getAxis("left")._tickLevels[0][7] == (7, "␣w7")  # rows named by their token
    panel.select_step(39)  # far down: the view scrolls to it
    low, high = panel.tokens_plot.getPlotItem().getViewBox().viewRange()[1]
    assert low <= 39 <= high and panel.selected_row() == 39


def test_both_heatmaps_have_colour_bars(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    for i in range(4):
        panel.add_step(routed(i, i))
    for bar, image, plot in zip(panel.colour_bars, (panel.tokens_image, panel.layers_image),
                                (panel.tokens_plot, panel.layers_plot)):
        assert isinstance(bar, pg.ColorBarItem) and [ref() for ref in bar.img_list] == [image]
        assert plot.getPlotItem().layout.itemAt(2, 5) is bar
        assert bar.levels() == pytest.approx(tuple(image.levels))
    assert panel.colour_bars[0].levels()[1] == pytest.approx(0.9)  # the scale runs to the largest shown


def test_load_plot_has_token_fractions_and_mean_probabilities(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    for i in range(4):
        panel.add_step(routed(i, 2))
    f, p = panel.expert_load(0)
    assert f.tolist() == pytest.approx([0, 0, 0.5, 0.5]) and f.sum() == pytest.approx(1)  # 2 slots per token
    assert p[2] == pytest.approx(0.9) and p.sum() == pytest.approx(1)
    assert panel.load_balance(0) == pytest.approx(4 * (0.5 * 0.9 + 0.5 * 0.1 / 3))


def test_a_dense_layer_of_an_moe_model_says_so(qtbot):
    """A MoEfied model routes in layers 1.. only: the panel starts on the first routed layer, and
    choosing the dense layer 0 says it has no experts instead of drawing an empty load."""
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(3, 4, 2)
    step = routed(0, 1, layers=3)
    panel.add_step(StepRecord(0, 0, token_id=0, text="t", prob=0.5, routing=step.routing[1:]))
    assert panel.layer.value() == 1 and panel.token_expert_matrix(1).shape == (1, 4)
    panel.layer.setValue(0)
    assert "dense MLP" in panel.balance.text()


def test_dense_model_says_so(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(30, 0, 0)
    assert panel.is_dense_message_shown()
    assert "SmolLM2-135M-MoE" in panel.dense_label.text()  # where routing can be seen
    assert panel.dense_label.margin() > 0  # not against the dock's (and a laptop screen's) edge


def test_an_moe_before_its_first_token_says_what_will_show(qtbot):
    panel = RoutingPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(4, 8, 2)
    assert "No tokens yet" in panel.balance.text() and "0.00" not in panel.balance.text()


def attention_view(layer: int = 0, first: int = 3, queries: int = 3, heads: int = 4) -> AttentionView:
    """Head h of query row i looks at position h (or at itself when h is later); positions run to first+queries."""
    weights = np.zeros((heads, queries, first + queries), dtype=np.float32)
    for h in range(heads):
        for i in range(queries):
            weights[h, i, min(h, first + i)] = 1.0
    return AttentionView(layer, first, tuple(h // 2 for h in range(heads)), weights)


def test_attention_view_heads_mean_and_later_positions(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    panel.set_token_labels(["a", " b", "\n", "d", "e", "f"])
    panel.show_view(attention_view(first=3, queries=3))
    mean = panel.matrix()
    assert mean.shape == (3, 6)
    assert np.isnan(mean[0, 4]) and np.isnan(mean[1, 5]) and not np.isnan(mean[2, 5])  # query 3 sees 0..3
    assert panel.shown_heads() == (1,)  # the sharpest: heads 1-3 each look at one token (the first of them)
    panel.head.activated.emit(panel.head_choices.index(("all",)))
    mean = panel.matrix()
    assert mean[0, :4] == pytest.approx([0.25, 0.25, 0.25, 0.25])
    panel.head.activated.emit(panel.head_choices.index(("head", 2)))
    assert panel.matrix()[2, 2] == 1.0 and "head 2 (KV group 1)" in panel.note.text()
    assert "positions 3–5" in panel.note.text()


def test_attention_panel_asks_for_its_layer_when_shown_and_says_it_computes(qtbot):
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.set_model_info(2, 4, 2)
    panel.layer.setValue(0)
    with qtbot.waitSignal(panel.wanted) as shown:
        panel.show()
    assert shown.args == [0]
    with qtbot.waitSignal(panel.wanted) as changed:
        panel.layer.setValue(1)
    assert changed.args == [1] and panel.current_layer() == 1
    panel.show_computing()
    assert "Computing layer 1" in panel.note.text()
    panel.show_view(attention_view(layer=0))  # an answer for another layer is not drawn as layer 1's
    assert panel.matrix().size == 0
    panel.layer.setValue(0)
    assert panel.matrix().shape == (3, 6)
    panel.clear()
    assert panel.matrix().size == 0
