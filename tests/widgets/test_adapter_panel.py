"""The adapter panel: its rows drawn from AdapterFacts, edits sent once the user pauses, and the comparison
drawn from an AdapterComparisonView built by hand (the engine's replays are tested in tests/engine)."""
import numpy as np
import pytest

from engine.records import AdapterComparisonView, AdapterFacts
from widgets.adapter_panel import EDIT_PAUSE_MS, AdapterPanel

TEXTS = (" its", " the", " being", " a", " Paris", " French", " wine", " having")


def facts(name="style", enabled=True, scale=1.0) -> AdapterFacts:
    return AdapterFacts(name, f"/adapters/{name}", 8, 16.0, False, ("q_proj", "v_proj"), (0, 1), 4096, enabled, scale)


def comparison(same=False) -> AdapterComparisonView:
    base = np.array([0.46, 0.21, 0.09, 0.06, 0.05, 0.04, 0.03, 0.02])
    probs = base.copy() if same else np.array([0.12, 0.41, 0.05, 0.12, 0.02, 0.08, 0.06, 0.01])
    return AdapterComparisonView(("style ×0.5",), 12, 502, tuple(range(501, 509)), TEXTS, tuple(base), tuple(probs),
                                 0.0 if same else 0.312, same)


@pytest.fixture
def panel(qtbot):
    panel = AdapterPanel()
    qtbot.addWidget(panel)
    panel.resize(380, 600)
    panel.set_model_loaded(True)
    panel.show()
    return panel


def test_rows_follow_the_engine_and_edits_go_out_once_paused(panel, qtbot):
    assert panel.add_button.isEnabled() and panel.adapter_names() == []
    panel.set_adapters((facts(), facts("other", enabled=False, scale=0.5)))
    assert panel.adapter_names() == ["style", "other"]
    assert "style ×1" in panel.banner.text() and "other" not in panel.banner.text()
    row = panel.row("other")
    assert not row.enabled.isChecked() and row.scale.value() == 0.5 and row.slider.value() == 10
    sent = []
    panel.adapter_changed.connect(lambda *args: sent.append(args))
    row.enabled.setChecked(True)
    for step in (12, 14, 16):  # a drag: one change goes out, the last
        row.slider.setValue(step)
    qtbot.waitUntil(lambda: bool(sent), timeout=EDIT_PAUSE_MS * 8)
    qtbot.wait(EDIT_PAUSE_MS * 2)
    assert sent == [("other", True, 0.8)]
    panel.set_adapters((facts(), facts("other", scale=0.8)))  # the engine's answer keeps the rows
    assert panel.row("other") is row and "other ×0.8" in panel.banner.text()
    with qtbot.waitSignal(panel.remove_requested) as removed:
        row.remove.click()
    assert removed.args == ["other"]


def test_the_comparison_is_drawn_from_the_view(panel):
    panel.set_adapters((facts(scale=0.5),))
    panel.show_view(comparison())
    widths = panel.bar_widths()
    assert np.allclose(widths["without"], comparison().base_probs) and np.allclose(widths["with"], comparison().probs)
    assert "KL 0.312" in panel.summary.text() and "top-1 changed" in panel.summary.text()
    assert "“␣the”" in panel.summary.text()  # the chosen token, whitespace made visible
    assert len(panel.tick_labels()) == 8 and panel.tick_labels()[0].startswith("␣its")
    panel.show_view(comparison(same=True))
    assert "top-1 unchanged" in panel.summary.text()
    panel.set_adapters((facts(enabled=False),))  # nothing on: nothing to compare
    assert panel.view is None and "Switch an adapter on" in panel.message.text()


def test_a_new_model_drops_the_rows(panel):
    panel.set_adapters((facts(),))
    panel.set_model_loaded(False)
    assert panel.adapter_names() == [] and not panel.add_button.isEnabled()


def test_a_removed_row_greys_at_once_and_comes_back_if_refused(panel, qtbot):
    panel.set_adapters((facts("style"), facts("tone")))
    with qtbot.waitSignal(panel.remove_requested) as removed:
        panel.row("style").remove.click()
    assert removed.args == ["style"] and not panel.row("style").isEnabled() and panel.row("tone").isEnabled()
    panel.show_problem("Adapter not changed: no such adapter")
    assert panel.row("style").isEnabled()
    panel.set_adapters((facts("tone"),))  # the engine's answer: gone
    assert panel.adapter_names() == ["tone"]


def test_the_banner_names_every_adapter_on(panel):
    panel.set_adapters((facts("style"),))
    assert panel.banner.text() == "LoRA on: style ×1 (the chat generates with it)"
    panel.set_adapters((facts("style"), facts("tone", scale=0.5)))
    assert panel.banner.text() == "LoRA on: style ×1 · tone ×0.5 (the chat generates with them)"


def test_the_bars_key_is_under_the_summary_not_over_the_lowest_bars(panel):
    """A legend inside the plot covered its lowest rows, where a token the adapter lifts from almost nothing
    (rows are ordered by the probability without the adapters) draws its longest bar."""
    view = comparison()
    texts = ("<|im_end|>",) + view.token_texts[1:]
    panel.set_adapters((facts(),))
    panel.show_view(AdapterComparisonView(view.adapters, view.position, 501, view.token_ids, texts, view.base_probs,
                                          view.probs, view.kl, view.top1_same))
    assert panel.bars.getPlotItem().legend is None
    summary = panel.summary.text()
    assert "■</span> without" in summary and "with the adapters" in summary
    assert "&lt;|im_end|&gt;" in summary  # the chosen token escaped, not read as markup
