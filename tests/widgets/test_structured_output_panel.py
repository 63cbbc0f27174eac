"""Structured output in the GUI: the sampler panel's constraint option, and the probabilities panel
showing the tokens the constraint removed as a stage of their own (re-derived from a step record)."""
import torch

from engine.text.constraints import compile_grammar
from engine.records import SamplingParams, StepRecord
from engine.sampling import run_chain
from engine.instrumentation.distribution import distribution_view
from widgets.probabilities_panel import ProbabilitiesPanel
from widgets.sampler_panel import CONSTRAINT_EXAMPLES, SamplerPanel

TEXTS = ["{", " {", "Hello", "[", "\n", "Sure"]


def test_examples_fill_the_constraint_and_reach_the_params(qtbot):
    panel = SamplerPanel()
    qtbot.addWidget(panel)
    assert panel.params().constraint_kind == ""
    assert CONSTRAINT_EXAMPLES  # the loop below checks each one
    for index, (name, (kind, text)) in enumerate(CONSTRAINT_EXAMPLES.items(), start=1):
        compile_grammar(kind, text)  # every example is a valid constraint
        with qtbot.waitSignal(panel.params_changed) as blocker:
            panel._apply_example(index)
        assert (blocker.args[0].constraint_kind, blocker.args[0].constraint) == (kind, text), name
    panel.constraint_kind.setCurrentIndex(panel.constraint_kind.findData(""))
    assert (panel.params().constraint_kind, panel.params().constraint) == ("", "")
    wanted = SamplingParams(temperature=0.4, constraint_kind="regex", constraint="[0-9]+")
    panel.set_params(wanted)
    assert panel.params() == wanted
    panel.constraint_text.setPlainText("   ")  # an empty text means no constraint, not an error
    assert panel.params().constraint_kind == ""


def test_probabilities_panel_shows_the_constraint_stage(qtbot):
    logits = torch.log(torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05]))
    allowed = (True, True, False, True, False, False)
    record = StepRecord(0, 0, token_id=0, text="{", prob=0.5, logit_ids=tuple(range(6)),
                        logit_values=tuple(logits.tolist()), logit_allowed=allowed)
    params = SamplingParams(temperature=1.0, top_k=2)
    view = distribution_view(record, params, TEXTS.__getitem__, top_n=6)
    assert [s.name for s in view.stages][:2] == ["raw", "constraint"]
    assert next(s for s in view.stages if s.name == "constraint").removed == (2, 4, 5)
    reference = run_chain(logits.masked_fill(~torch.tensor(allowed), float("-inf")), params).probs
    assert torch.allclose(torch.tensor(view.stages[-1].probs), reference[list(view.token_ids)], atol=1e-6)
    panel = ProbabilitiesPanel()
    qtbot.addWidget(panel)
    panel.show_distribution(view)
    assert panel.removed_by_stage() == {2: "constraint", 4: "constraint", 5: "constraint", 3: "top_k"}
    assert (panel.bar_heights()["final"] > 0).sum() == 2
