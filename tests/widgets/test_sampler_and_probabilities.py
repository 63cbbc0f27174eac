"""Sampler controls and the probabilities panel, fed real records (no mocks)."""
import torch

from engine.records import SamplingParams, StepRecord
from engine.instrumentation.distribution import distribution_view
from widgets.probabilities_panel import ProbabilitiesPanel
from widgets.sampler_panel import SamplerPanel

TEXTS = ["Paris", " the", "\n", " Lyon", " a", " it"]


def record():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.12, 0.08, 0.06, 0.04]))
    return StepRecord(0, 0, token_id=0, text="Paris", prob=0.5, logit_ids=tuple(range(6)),
                      logit_values=tuple(logits.tolist()))


def test_slider_and_spin_box_stay_in_step_and_emit_params(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.params_changed) as blocker:
        panel.knobs["temperature"].slider.setValue(30)  # 30 steps of 0.05
    assert blocker.args[0].temperature == 1.5 and panel.knobs["temperature"].spin.value() == 1.5
    with qtbot.waitSignal(panel.params_changed) as blocker:
        panel.knobs["top_k"].spin.setValue(40)
    assert blocker.args[0].top_k == 40 and panel.knobs["top_k"].slider.value() == 40


def test_presets_and_round_trip(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    panel.presets.combo.activated.emit(panel.presets.combo.findText("Greedy"))  # as a click on the item
    assert panel.params().temperature == 0.0
    panel.presets.choose("Creative")
    assert (panel.params().temperature, panel.params().top_p, panel.params().min_p) == (1.1, 0.98, 0.02)
    wanted = SamplingParams(temperature=0.35, top_k=12, top_p=0.8, min_p=0.05, typical_p=0.9,
                            repetition_penalty=1.2, presence_penalty=-0.5, frequency_penalty=1.25,
                            max_new_tokens=77, seed=9, stop=("###", "\nUser:", " end ", "a\\nb"))
    panel.set_params(wanted)
    assert panel.params() == wanted


def test_probabilities_follow_the_sampler_without_the_model(qtbot):
    panel = ProbabilitiesPanel()
    qtbot.addWidget(panel)
    rec = record()
    panel.show_distribution(distribution_view(rec, SamplingParams(temperature=1.0, top_k=2), TEXTS.__getitem__))
    heights = panel.bar_heights()
    assert (heights["final"] > 0).sum() == 2 and abs(heights["final"].sum() - 1) < 1e-6
    assert set(panel.removed_by_stage().values()) == {"top_k"} and len(panel.removed_by_stage()) == 4
    assert max(abs(heights["raw"] - [0.5, 0.2, 0.12, 0.08, 0.06, 0.04])) < 1e-6
    panel.show_distribution(distribution_view(rec, SamplingParams(temperature=1.0, top_p=0.99), TEXTS.__getitem__))
    assert (panel.bar_heights()["final"] > 0).sum() == 6 and not panel.removed_by_stage()
    panel.show_distribution(distribution_view(rec, SamplingParams(temperature=0.0), TEXTS.__getitem__))
    assert (panel.bar_heights()["final"] > 0).sum() == 1
    assert "Paris" in panel.title.text()


def test_offer_tools_is_disabled_with_the_reason_when_the_template_takes_none(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    panel.set_tools_available(False, "SmolLM2")
    assert not panel.offer_tools.isEnabled()
    assert "SmolLM2" in panel.offer_tools.toolTip() and "takes no tools" in panel.offer_tools.toolTip()
    panel.set_tools_available(True, "Qwen")
    assert panel.offer_tools.isEnabled() and "takes no tools" not in panel.offer_tools.toolTip()
    with qtbot.waitSignal(panel.tools_changed) as blocker:
        panel.offer_tools.click()
    assert blocker.args == [True]


def test_token_labels_never_run_together_and_the_whole_token_is_the_tooltip(qtbot):
    """Long tokens are elided to their bar's width (they used to overlap); hovering a bar names it whole."""
    from PySide6.QtGui import QFontMetrics

    panel = ProbabilitiesPanel()
    qtbot.addWidget(panel)
    panel.resize(360, 520)
    panel.show()
    qtbot.waitExposed(panel)
    texts = [" internationalization", " the", "\n", " Constantinople", " a", " it"]
    panel.show_distribution(distribution_view(record(), SamplingParams(temperature=1.0, top_k=2), texts.__getitem__))
    qtbot.wait(50)  # the view's range settles on the new bars
    box, axis = panel.bars.getViewBox(), panel.bars.getAxis("bottom")
    low, high = box.viewRange()[0]
    slot = box.width() / (high - low)
    metrics = QFontMetrics(axis.style.get("tickFont") or axis.font())
    labels = panel.tick_labels()
    shown = [(i, label) for i, label in enumerate(labels) if label]
    assert len(labels) == 6 and shown[0][0] == 0 and len(shown) >= 2
    assert shown[0][1] != "␣internationalization" and shown[0][1].endswith("…")  # did not fit: elided
    for (i, a), (j, b) in zip(shown, shown[1:]):  # centred on their bars: half of each fits between them
        assert (metrics.horizontalAdvance(a) + metrics.horizontalAdvance(b)) / 2 <= (j - i) * slot
    centre = box.mapViewToScene(pg_point(0, 0.2))
    panel.bars.scene().sigMouseMoved.emit(centre)
    assert "␣internationalization" in panel.bars.toolTip() and "model 0.5000" in panel.bars.toolTip()
    panel.resize(900, 520)  # wider: whole words come back
    qtbot.waitUntil(lambda: panel.tick_labels()[:4] == ["␣internationalization", "␣the", "⏎", "␣Constantinople"],
                    timeout=2000)


def pg_point(x, y):
    from PySide6.QtCore import QPointF

    return QPointF(x, y)
