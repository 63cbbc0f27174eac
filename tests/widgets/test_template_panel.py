"""The template panel: mode, template choice (the model's own, the built-ins, an edit seeded from the one
shown), overflow policy; options() as Turn takes them, a state that restores, problems shown."""
import pytest

from engine.text.builtin_templates import BUILTIN_TEMPLATES
from widgets.template_panel import EDITED, MODEL, TemplatePanel

OWN = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.fixture
def panel(qtbot):
    panel = TemplatePanel()
    qtbot.addWidget(panel)
    panel.set_model_template(OWN)
    panel.set_builtin_templates(BUILTIN_TEMPLATES)
    return panel


def choose(panel, key):
    panel.choice.setCurrentIndex(panel.choice.findData(key))


def test_defaults_are_the_models_own_template_in_chat_mode(panel):
    assert panel.options() == {"mode": "chat", "template": None, "overflow": "fail"}
    assert panel.source.toPlainText() == OWN and panel.source.isReadOnly()
    assert [panel.choice.itemData(i) for i in range(panel.choice.count())] == [MODEL, *BUILTIN_TEMPLATES, EDITED]


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_a_builtin_choice_sends_its_source_and_shows_it(panel, qtbot, name):
    with qtbot.waitSignal(panel.options_changed) as signal:
        choose(panel, name)
    assert signal.args[0]["template"] == BUILTIN_TEMPLATES[name] == panel.options()["template"]
    assert panel.source.toPlainText() == BUILTIN_TEMPLATES[name] and panel.source.isReadOnly()


def test_edited_starts_from_the_template_shown_and_sends_the_edit_once_typing_pauses(panel, qtbot):
    choose(panel, "Gemma")
    choose(panel, EDITED)
    assert panel.source.toPlainText() == BUILTIN_TEMPLATES["Gemma"] and not panel.source.isReadOnly()
    with qtbot.waitSignal(panel.options_changed, timeout=2000) as signal:
        panel.source.setPlainText("{{ messages[0].content }}!")
    assert signal.args[0]["template"] == "{{ messages[0].content }}!"
    choose(panel, "ChatML")  # the edit is kept while another template is shown
    choose(panel, EDITED)
    assert panel.options()["template"] == "{{ messages[0].content }}!"


def test_completion_mode_greys_the_template_out_and_says_why(panel, qtbot):
    with qtbot.waitSignal(panel.options_changed) as signal:
        panel.mode.setCurrentIndex(panel.mode.findData("completion"))
    assert signal.args[0]["mode"] == "completion"
    assert not panel.choice.isEnabled() and not panel.source.isEnabled() and not panel.mode_note.isHidden()


def test_overflow_policy(panel, qtbot):
    with qtbot.waitSignal(panel.options_changed) as signal:
        panel.overflow.setCurrentIndex(panel.overflow.findData("drop_oldest"))
    assert signal.args[0]["overflow"] == "drop_oldest"


def test_a_problem_is_shown_until_cleared(panel):
    panel.show_problem("the chat template has a syntax error on line 2")
    assert not panel.problem.isHidden() and "line 2" in panel.problem.text()
    panel.show_problem("")
    assert panel.problem.isHidden()


def test_state_restores_even_before_the_templates_arrive(panel, qtbot):
    choose(panel, "Llama 3")
    panel.overflow.setCurrentIndex(panel.overflow.findData("drop_oldest"))
    state = panel.state()
    fresh = TemplatePanel()
    qtbot.addWidget(fresh)
    fresh.restore(state | {"mode": "bogus"})
    assert fresh.options()["template"] is None  # Llama 3's source is not known yet
    fresh.set_builtin_templates(BUILTIN_TEMPLATES)
    assert fresh.options() == panel.options() == {"mode": "chat", "template": BUILTIN_TEMPLATES["Llama 3"],
                                                  "overflow": "drop_oldest"}
