"""The intervention panel: the list its controls build, the banner, and the what-if result drawn from an
InterventionView built by hand (the engine's replay under interventions is tested in tests/engine)."""
import numpy as np
import pytest

from engine.records import Intervention, InterventionView
from widgets.intervention_panel import INTERVENED, BASE, InterventionPanel

TEXTS = (" its", " the", " being", " a", " Paris", " French", " wine", " having", " romantic", " fashion")


def intervention_view(interventions=(Intervention("head", 3, 5),), same: bool = False) -> InterventionView:
    base = np.array([0.46, 0.21, 0.09, 0.06, 0.05, 0.04, 0.03, 0.02, 0.015, 0.01])
    probs = base.copy() if same else np.array([0.22, 0.31, 0.05, 0.12, 0.02, 0.08, 0.06, 0.01, 0.03, 0.02])
    return InterventionView(interventions=tuple(interventions), target_id=501, token_ids=tuple(range(501, 511)),
                            token_texts=TEXTS, base_probs=tuple(base), probs=tuple(probs),
                            kl=0.0 if same else 0.187, top1_same=same)


@pytest.fixture
def panel(qtbot):
    panel = InterventionPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.set_model_shape(30, 9, 3, 0)
    panel.show()
    return panel


def choose(panel, kind: str, layer: int, index: int, scale: float) -> Intervention:
    panel.kind.setCurrentIndex(panel.kind.findData(kind))
    panel.layer.setValue(layer)
    panel.index.setValue(index)
    panel.scale.setValue(scale)
    return panel.add_from_controls()


def test_the_list_holds_exactly_what_the_controls_say(panel, qtbot):
    with qtbot.waitSignal(panel.changed) as blocker:
        choose(panel, "head", 3, 5, 0.0)
    assert blocker.args == [(Intervention("head", 3, 5, 0.0),)]
    choose(panel, "mlp", 7, 4, 0.5)  # an MLP has no index: it is 0 whatever the hidden spin box says
    assert panel.interventions() == (Intervention("head", 3, 5, 0.0), Intervention("mlp", 7, 0, 0.5))
    assert [panel.list.item(i).text() for i in range(panel.list.count())] == ["layer 3 head 5 off", "layer 7 MLP ×0.5"]
    choose(panel, "head", 3, 5, 1.5)  # the same head again: its scale changes, no second entry
    assert panel.interventions() == (Intervention("mlp", 7, 0, 0.5), Intervention("head", 3, 5, 1.5))
    panel.scale_slider.setValue(3)  # slider and spin box move together: 3 of 20 steps over 0..2
    assert panel.scale.value() == pytest.approx(0.3)
    panel.list.item(0).setSelected(True)
    panel.remove_button.click()
    assert panel.interventions() == (Intervention("head", 3, 5, 1.5),)
    with qtbot.waitSignal(panel.changed) as blocker:
        panel.clear_button.click()
    assert blocker.args == [()] and panel.list.count() == 0


def test_controls_are_bounded_by_the_model_shape(panel):
    assert [panel.kind.itemData(i) for i in range(panel.kind.count())] == ["head", "mlp"]  # dense: no experts
    assert (panel.layer.maximum(), panel.index.maximum()) == (29, 8)
    panel.layer.setValue(99)
    panel.index.setValue(99)
    assert panel.add_from_controls() == Intervention("head", 29, 8)
    assert panel.index_note.text() == "KV group 2 of 3"
    panel.set_model_shape(4, 4, 2, 8)  # another model: the old interventions go
    assert panel.interventions() == ()
    assert [panel.kind.itemData(i) for i in range(panel.kind.count())] == ["head", "expert", "mlp"]
    assert choose(panel, "expert", 9, 9, 0) == Intervention("expert", 3, 7)


def test_a_new_turn_clears_them_unless_kept(panel, qtbot):
    choose(panel, "head", 1, 2, 0)
    panel.clear_unless_kept()
    assert panel.interventions() == ()
    choose(panel, "head", 1, 2, 0)
    with qtbot.waitSignal(panel.keep_changed) as blocker:
        panel.keep.setChecked(True)
    assert blocker.args == [True] and panel.keep_on()
    panel.clear_unless_kept()
    assert panel.interventions() == (Intervention("head", 1, 2),)
    assert "kept on for the next turns" in panel.banner_text()


def test_the_banner_is_unmistakable_while_any_is_active(panel):
    assert panel.banner_text().startswith("No intervention")
    choose(panel, "head", 3, 5, 0)
    choose(panel, "mlp", 7, 0, 0)
    assert panel.banner_text() == "Intervention active: layer 3 head 5 off · layer 7 MLP off (this what-if only)"
    assert "c0392b" in panel.banner.styleSheet()
    panel.clear_button.click()
    assert panel.banner_text().startswith("No intervention") and "c0392b" not in panel.banner.styleSheet()


def test_result_bars_legend_and_summary_come_from_the_view(panel):
    view = intervention_view()
    panel.show_view(view)
    heights = panel.bar_heights()
    np.testing.assert_allclose(heights["base"], view.base_probs)
    np.testing.assert_allclose(heights["intervened"], view.probs)
    for sample, label in panel.legend.items:
        item = sample.item
        assert item.opts["brushes"] is None  # no bar drawn in another colour than its swatch
        assert pg_colour(item.opts["brush"]) == {"model as loaded": BASE, "with the interventions": INTERVENED}[label.text]
    assert panel.summary.text().endswith("KL 0.187 nats · top-1 changed (“␣its” → “␣the”)")
    assert len(panel.tick_labels()) == len(TEXTS)
    panel.show_view(intervention_view(interventions=(), same=True))
    assert "top-1 unchanged (“␣its”)" in panel.summary.text()
    panel.show_computing()
    assert "Computing" in panel.message.text() and panel.result.currentWidget() is panel.message
    panel.clear_result()
    assert panel.summary.text() == "" and panel.result.currentWidget() is panel.message


def pg_colour(brush) -> str:
    import pyqtgraph as pg

    return pg.mkBrush(brush).color().name()
