"""Speculative decoding in the GUI: the sampler panel's drafter and k controls produce SpeculativeOptions,
and the chat panel marks accepted, resampled (after struck-through rejected drafts) and bonus tokens."""
from engine.records import DraftToken, SpecStep, SpeculativeOptions, StepRecord
from widgets.chat import ChatPanel, spec_figures_text, spec_marks
from widgets.sampler_panel import SamplerPanel


def test_sampler_panel_speculative_options(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    assert panel.speculative() == SpeculativeOptions()  # off by default
    seen = []
    panel.speculative_changed.connect(seen.append)
    panel.drafter.setCurrentText("ngram")
    panel.spec_k.setValue(8)
    panel.spec_adaptive.setChecked(True)
    assert panel.speculative() == SpeculativeOptions("ngram", 8, True) == seen[-1]
    panel.drafter.setCurrentText("/models/draft.gguf")  # editable: a draft model's path
    assert panel.speculative().drafter == "/models/draft.gguf"
    panel.drafter.setCurrentText("off")
    assert not panel.speculative().enabled
    # The offered drafters read as what they are; each still reaches the engine by its own name.
    offered = [panel.drafter.itemText(i) for i in range(panel.drafter.count())]
    assert offered == ["Off", "Prompt lookup (n-gram)", "First 20 layers of this model", "This model in int4"]
    names = []
    for i in range(panel.drafter.count()):
        panel.drafter.setCurrentIndex(i)
        names.append(panel.speculative().drafter)
    assert names == ["", "ngram", "self-layers:20", "self-int4"]


def test_chat_panel_marks_speculative_tokens(qtbot):
    step = SpecStep("ngram", (DraftToken(5, " cat", True, 1.0, 0.9), DraftToken(6, " dog", False, 1.0, 0.1)),
                    accepted=1, tokens_per_forward=2, acceptance_rate=0.5, acceptance_by_position=(1.0, 0.0),
                    mean_accepted=1.0, speedup=1.4)
    records = [StepRecord(0, 0, 5, " cat", 0.9, spec_role="accepted"),
               StepRecord(0, 1, 7, " fox", 0.6, spec_role="resampled", spec=step),
               StepRecord(0, 2, 8, " ran", 0.5)]
    assert [spec_marks(r) for r in records] == [("accepted", ""), ("resampled", " dog", 0.5, 2.0), ("", "")]
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.begin_assistant()
    assert panel.spec_legend.isHidden() and panel.show_rejected.isHidden()  # no speculation yet: no clutter
    panel.append_tokens([(i, r.text, r.prob, *spec_marks(r)) for i, r in enumerate(records)])
    html = panel._live_html()
    assert "accepted (speculative)" in html and "resampled (speculative)" in html
    # Rejected drafts are not part of the reply: hidden by default, struck through when asked for.
    assert "line-through" not in html and not panel.spec_legend.isHidden() and not panel.show_rejected.isHidden()
    assert panel.transcript_text().replace("\u258d", "").strip().endswith("cat fox ran")
    panel.show_rejected.setChecked(True)
    html = panel._live_html()
    assert "line-through" in html and html.index(" dog") < html.index(" fox")
    assert panel.transcript_text().replace("\u258d", "").strip().endswith("cat dog fox ran")
    panel.end_assistant()  # a finished turn follows the toggle too
    panel.show_rejected.setChecked(False)
    assert panel.transcript_text().strip().endswith("cat fox ran")
    panel.show_rejected.setChecked(True)
    assert panel.transcript_text().strip().endswith("cat dog fox ran")


def spec_step(accepted: int, k: int, rate: float, mean_accepted: float) -> SpecStep:
    drafted = tuple(DraftToken(10 + i, f" d{i}", i < accepted, 1.0, 0.5) for i in range(k))
    return SpecStep("ngram", drafted, accepted=accepted, tokens_per_forward=accepted + 1, acceptance_rate=rate,
                    acceptance_by_position=(rate,) * k, mean_accepted=mean_accepted, speedup=0.0)


def test_chat_panel_shows_the_live_acceptance_rate(qtbot):
    """The running acceptance rate and tokens per target forward follow the reply's newest SpecStep, tick
    by tick, and a new reply starts without the last one's figures."""
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.begin_assistant()
    assert panel.spec_rate.isHidden() and panel.spec_figures() is None
    steps = [spec_step(3, 4, 0.75, 3.0), spec_step(0, 4, 0.375, 1.5), spec_step(4, 4, 0.583, 2.333)]
    tick = [StepRecord(0, 0, 10, " d0", 0.9, spec_role="accepted"),
            StepRecord(0, 1, 11, " d1", 0.9, spec_role="accepted"),
            StepRecord(0, 2, 12, " d2", 0.9, spec_role="accepted"),
            StepRecord(0, 3, 20, " x", 0.4, spec_role="resampled", spec=steps[0])]
    panel.append_tokens([(i, r.text, r.prob, *spec_marks(r)) for i, r in enumerate(tick)])
    assert panel.spec_figures() == (steps[0].acceptance_rate, steps[0].mean_accepted + 1)
    assert not panel.spec_rate.isHidden() and "75%" in panel.spec_rate.text() and "4.00" in panel.spec_rate.text()
    # two steps in one tick: the newest one's figures
    tick = [StepRecord(0, 4, 21, " y", 0.4, spec_role="resampled", spec=steps[1])] + [
        StepRecord(0, 5 + i, 10 + i, f" d{i}", 0.9, spec_role="accepted") for i in range(4)] + [
        StepRecord(0, 9, 30, " z", 0.8, spec_role="bonus", spec=steps[2])]
    panel.append_tokens([(4 + i, r.text, r.prob, *spec_marks(r)) for i, r in enumerate(tick)])
    last = steps[-1]
    assert panel.spec_figures() == (last.acceptance_rate, last.mean_accepted + 1)
    assert panel.spec_rate.text() == spec_figures_text(last.acceptance_rate, last.mean_accepted + 1)
    text = panel.spec_rate.text()
    assert "58%</b> of drafts accepted" in text and "3.33</b> tokens per model forward pass" in text
    panel.append_tokens([(10, " w", 0.5, *spec_marks(StepRecord(0, 10, 31, " w", 0.5, spec_role="accepted")))])
    assert panel.spec_figures() == (last.acceptance_rate, last.mean_accepted + 1)  # mid-step: unchanged
    panel.end_assistant()
    assert not panel.spec_rate.isHidden()  # the finished reply's figures stay until the next one
    panel.begin_assistant()
    assert panel.spec_rate.isHidden() and panel.spec_figures() is None
    panel.clear()
    assert panel.spec_rate.isHidden()
