"""The probabilities panel draws every active sampler stage of a real DistributionView: a plot per stage with
the engine's reason, the curve entering top-p with its line, entropy before and after, a legend whose
swatches are the bars' own colours."""
import numpy as np
import pytest
import torch
from PySide6.QtGui import QColor

from engine.instrumentation.distribution import distribution_view
from engine.records import SamplingParams, StepRecord
from widgets.probabilities_panel import ProbabilitiesPanel

STORED = 80


def view_for(params, history=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1000, generator=g)[:STORED]
    logits = torch.randn(STORED, generator=g) * 2.0
    order = ids[torch.argsort(logits, descending=True)]
    record = StepRecord(0, 9, token_id=int(order[1]), text="x", prob=0.2, logit_ids=tuple(ids.tolist()),
                        logit_values=tuple(logits.tolist()))
    texts = {int(t): f" word{k}" for k, t in enumerate(order)}
    hist = [int(order[i]) for i in history]
    return distribution_view(record, params, texts.__getitem__, top_n=12, history=hist)


PARAMS = SamplingParams(temperature=0.8, top_k=30, top_p=0.6, repetition_penalty=1.4)


@pytest.fixture
def panel(qtbot):
    panel = ProbabilitiesPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 560)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_one_plot_per_active_stage_with_its_reason(panel):
    view = view_for(PARAMS, history=(0, 2, 5))
    panel.show_distribution(view)
    assert panel.stage_plots() == ("raw", "penalties", "temperature", "top_k", "top_p")
    assert [n for n, row in panel.rows.items() if row.isVisibleTo(panel)] == list(panel.stage_plots())
    for name, text in panel.reasons().items():
        reason = view.stage(name).reason
        assert text.replace("<b>", "").replace("</b>", "") == reason.replace("×", "×")
    assert "3 shown tokens seen before" in panel.reasons()["penalties"]
    assert panel.off.text() == "off: min-p, typical-p"
    assert panel.entropy.text() == f"entropy before sampler {view.entropy_before:.2f} nats → after {view.entropy:.2f} nats"
    assert view.entropy_before > view.entropy > 0
    heights = panel.bar_heights()
    for name in panel.stage_plots():
        assert np.allclose(heights[name], view.stage(name).probs)
    # a stage's removed tokens are drawn at the height they had entering it
    top_p = panel.rows["top_p"].removed.opts
    entering = np.array(view.stage("top_k").probs)
    cut = np.isin(view.token_ids, view.stage("top_p").removed)
    assert cut.any() and np.allclose(top_p["height"], entering[cut]) and np.array_equal(top_p["x"], np.flatnonzero(cut))
    # without history the penalties are listed as off, with the reason
    panel.show_distribution(view_for(PARAMS))
    assert "penalties" not in panel.stage_plots() and "penalties (no token history to penalise)" in panel.off.text()


def test_the_top_p_line_sits_on_the_curve_entering_top_p(panel):
    view = view_for(PARAMS, history=(0, 2, 5))
    panel.show_distribution(view)
    assert panel.cumulative.isVisibleTo(panel)
    x, y = panel.curve_data()
    assert np.allclose(y, view.top_p_curve[:len(y)]) and len(y) >= view.top_p_kept
    kept = view.top_p_kept
    assert y[kept - 2] < 0.6 <= y[kept - 1] and panel.top_p_line.value() == 0.6
    assert panel.cut_line.value() == kept + 0.5 and kept == view.stage("top_p").kept
    panel.show_distribution(view_for(SamplingParams(temperature=1.0, top_k=5)))
    assert not panel.cumulative.isVisibleTo(panel)


def test_legend_swatches_are_the_bars_colours(panel):
    view = view_for(PARAMS, history=(0, 2, 5))
    panel.show_distribution(view)
    swatches = panel.swatch_colours()
    chosen = view.token_ids.index(view.chosen_token_id)
    other = next(i for i in range(len(view.token_ids)) if i != chosen)

    def colour(item, i=None):
        brushes = item.opts.get("brushes")
        brush = brushes[i] if brushes is not None and i is not None else item.opts["brush"]
        return QColor(brush) if isinstance(brush, str) else brush.color()

    assert colour(panel.rows["raw"].kept, other) == swatches["model"]
    assert colour(panel.rows["top_k"].kept, other) == swatches["after the stage"]
    assert colour(panel.rows["top_k"].kept, chosen) == swatches["chosen"] == colour(panel.rows["raw"].kept, chosen)
    assert colour(panel.rows["top_p"].removed) == swatches["removed by the stage"]


def test_an_unchanged_view_is_not_redrawn_and_the_fork_still_works(panel, qtbot):
    view = view_for(PARAMS, history=(0, 2, 5))
    panel.show_distribution(view)
    calls = []
    for row in panel.rows.values():
        original = row.kept.setOpts
        row.kept.setOpts = lambda *a, original=original, **k: (calls.append(1), original(*a, **k))
    panel.show_distribution(view_for(PARAMS, history=(0, 2, 5)))  # equal, not the same object
    assert calls == []
    panel.show_distribution(view_for(SamplingParams(temperature=0.8, top_k=30, top_p=0.5, repetition_penalty=1.4),
                                     history=(0, 2, 5)))
    assert len(calls) == 1  # only top-p changed: the stages before it keep their bars
    index = panel.alternative.findData(view.token_ids[0])
    panel.alternative.setCurrentIndex(index)
    with qtbot.waitSignal(panel.alternative_chosen) as blocker:
        panel.continue_button.click()
    assert blocker.args == [view.token_ids[0]]


def test_hovering_a_stage_names_the_token_and_what_the_stage_did(panel):
    from PySide6.QtCore import QPointF

    view = view_for(PARAMS, history=(0, 2, 5))
    panel.show_distribution(view)
    i = view.token_ids.index(view.stage("top_p").removed[0])
    row = panel.rows["top_p"]
    row.plot.scene().sigMouseMoved.emit(row.plot.getViewBox().mapViewToScene(QPointF(i, 0.01)))
    tip = row.plot.toolTip()
    assert tip.startswith(f"“␣{view.token_texts[i].strip()}” (id {view.token_ids[i]}): ")
    assert "→ 0.0000 after top-p" in tip and tip.endswith("removed by top-p")


def test_the_title_says_when_these_settings_would_remove_the_chosen_token(panel):
    panel.show_distribution(view_for(SamplingParams(temperature=1.0, top_k=1)))  # the chosen one ranks second
    assert "under these settings top-k would remove it" in panel.title.text()
    panel.show_distribution(view_for(SamplingParams(temperature=1.0, top_k=5)))
    assert "would remove" not in panel.title.text()
