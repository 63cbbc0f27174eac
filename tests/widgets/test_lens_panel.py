"""The logit lens panel, fed LogitLensViews built by hand (the engine's replay is tested in tests/engine)."""
import numpy as np
import pytest

from engine.records import Intervention, LogitLensView
from widgets.lens_panel import EMPTY, LogitLensPanel

INPUTS = [" capital", " of", " France", " is", " Paris", ",", " famous", " for"]
NEXT = [" of", " France", " is", " Paris", ",", " famous", " for", " its"]
JUNK = ["\n", " the", ",", " and", " a", " of", ".", " in", " to", " is", "ing", " (", " that", " city",
        " country", " Europe", " French", " known", " beautiful", " capital", " Lyon", " its", " the", " wine"]


def lens_view(layers: int = 30, n: int = 5, seed: int = 0, interventions=()) -> LogitLensView:
    """Made-up but plausible: early blocks guess filler tokens, later ones settle on what came next."""
    rng = np.random.default_rng(seed)
    vocab = sorted(set(INPUTS + NEXT + JUNK))
    ids = {text: i + 100 for i, text in enumerate(vocab)}
    top_ids = np.zeros((layers, len(INPUTS), n), np.int64)
    top_probs = np.zeros((layers, len(INPUTS), n), np.float32)
    next_probs = np.zeros((layers, len(INPUTS)), np.float32)
    for column, following in enumerate(NEXT):
        settle = rng.integers(layers // 3, layers - 2)
        for row in range(layers):
            confidence = 1 / (1 + np.exp(-(row - settle) / 2.5))  # 0 early, 1 late
            candidates = list(rng.choice(JUNK, size=n + 2, replace=False))
            candidates = [c for c in candidates if c != following][:n - 1]
            p_next = 0.02 + 0.9 * confidence * rng.uniform(0.6, 1.0)
            rest = rng.dirichlet(np.full(n - 1, 0.7)) * (1 - p_next) * rng.uniform(0.3, 0.8)
            pairs = sorted([(p_next, following)] + list(zip(rest, candidates)), reverse=True)
            top_ids[row, column] = [ids[t] for _, t in pairs]
            top_probs[row, column] = [p for p, _ in pairs]
            next_probs[row, column] = p_next
    return LogitLensView(positions=tuple(range(40, 40 + len(INPUTS))), input_texts=tuple(INPUTS),
                         next_ids=tuple(ids[t] for t in NEXT), target_id=ids[NEXT[-1]], top_ids=top_ids,
                         top_probs=top_probs, next_probs=next_probs, texts={i: t for t, i in ids.items()},
                         interventions=tuple(interventions))


@pytest.fixture
def panel(qtbot):
    panel = LogitLensPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_cells_come_from_the_view(panel):
    view = lens_view()
    panel.show_view(view)
    texts = panel.cell_texts()
    assert len(texts) == 30 and len(texts[0]) == 8
    for row, column in [(0, 0), (12, 3), (29, 7)]:
        assert texts[row][column] == view.texts[int(view.top_ids[row, column, 0])]
    np.testing.assert_array_equal(panel.cell_colours(), view.top_probs[:, :, 0])
    assert panel.stack.currentWidget() is panel.canvas


def test_a_cells_readout_is_its_top_n_and_the_next_tokens_probability(panel):
    view = lens_view()
    panel.show_view(view)
    lines = panel.cell_readout(12, 3).splitlines()
    assert "block 12" in lines[0] and "“␣is”" in lines[0] and "position 43" in lines[0]
    for rank in range(5):
        token, p = int(view.top_ids[12, 3, rank]), float(view.top_probs[12, 3, rank])
        assert lines[1 + rank] == f"{rank + 1}. “{view.texts[token].replace(' ', '␣')}” {p:.3f}"
    assert lines[-1] == f"came next “␣Paris”: {float(view.next_probs[12, 3]):.3f}"
    assert panel.cell_readout(29, 7).startswith("after the output")
    assert panel.cell_readout(29, 7).splitlines()[-1].startswith("selected token “␣its”")


def test_the_target_strip_is_the_selected_tokens_probability_per_layer(panel):
    view = lens_view()
    panel.show_view(view)
    np.testing.assert_allclose(panel.target_strip(), view.next_probs[:, -1])
    assert "␣its" in panel.strip.titleLabel.text


def test_the_banner_names_the_interventions_and_hides_without_any(panel):
    panel.show_view(lens_view())
    assert panel.banner_text() == ""
    interventions = (Intervention("head", 3, 5), Intervention("mlp", 7, scale=0.5))
    panel.show_view(lens_view(interventions=interventions))
    assert panel.banner_text() == "Under intervention: layer 3 head 5 off · layer 7 MLP ×0.5"


def test_states_and_the_wanted_signal(panel, qtbot):
    assert panel.message.text() == EMPTY and panel.stack.currentWidget() is panel.message
    panel.show_computing()
    assert "Computing" in panel.message.text()
    panel.show_view(lens_view())
    panel.show_computing()  # the last lens stays on screen, the title says it is being redone
    assert panel.stack.currentWidget() is panel.canvas and "Recomputing" in panel.title.text()
    with qtbot.waitSignal(panel.wanted) as blocker:
        panel.positions.setValue(4)
    assert blocker.args == [4] and panel.columns() == 4
    panel.hide()
    with qtbot.waitSignal(panel.wanted):
        panel.show()
    panel.clear()
    assert panel.cell_texts() == [] and panel.stack.currentWidget() is panel.message


def test_texts_are_elided_to_their_cells(panel):
    panel.show_view(lens_view())
    shown = [item for row in panel._cells for item in row if item.isVisible()]
    assert shown, "30 rows in a 560 px panel leave room for text"
    width = panel.grid.getViewBox().width() / 8
    assert all(item.boundingRect().width() <= width + 8 for item in shown)  # TextItem adds its own margin


def test_a_lens_of_the_same_shape_reuses_its_cells(panel):
    """Making every cell's text item anew stalled the window at each selected token (seen under Xvfb)."""
    panel.show_view(lens_view(seed=0))
    first = [item for row in panel._cells for item in row]
    panel.show_view(lens_view(seed=1))
    again = [item for row in panel._cells for item in row]
    assert len(again) == len(first) and all(a is b for a, b in zip(first, again))
    assert [[item.toPlainText() for item in row] for row in panel._cells][-1][0] != ""  # texts redrawn
    panel.show_view(lens_view(layers=12, seed=1))  # another shape: new cells
    assert len(panel._cells) == 12 and len(panel._cells[0]) == len(first) // 30
