"""Modes and templates through the real window's worker on a tiny model: plain completion sends no template
tokens, a template override is rendered in the sandbox (a payload runs nothing and the turn fails with the
reason), drop_oldest keeps the system prompt and the newest turn, the context count is the engine's own,
the model's template comes after a load, and the template panel's choice survives a restart."""
from __future__ import annotations

import pytest

from app.settings import Settings
from app.turn import Turn
from engine.records import LoadOptions, SamplingParams
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401
from widgets.template_panel import TemplatePanel

PARAMS = SamplingParams(temperature=0, max_new_tokens=8)
SYSTEM = {"role": "system", "content": "t9 t9"}
OVERRIDE = "{% for m in messages %}t5 {{ m.content }} t6 {% endfor %}{% if add_generation_prompt %}t7{% endif %}"


@pytest.fixture
def window(qtbot, settings, hf_checkpoint, monkeypatch):  # noqa: F811 - the settings fixture imported above
    # a refused turn is these tests' answer, not a dialog to wait on (app/model_controller.py shows one)
    monkeypatch.setattr("app.model_controller.QMessageBox.warning", lambda *args: None)
    directory, _ = hf_checkpoint("llama", max_position_embeddings=64)
    window = open_window(qtbot, settings, directory)
    yield window
    close_window(window)


def generate(qtbot, window, turn: Turn):
    """Run `turn` on the window's worker to its end: (its TurnStart, None) or (None, why it failed)."""
    started, failed, finished = [], [], []
    slots = ((window.worker.turn_started, started.append), (window.worker.failed, failed.append),
             (window.worker.finished, finished.append))
    for signal, slot in slots:
        signal.connect(slot)
    window.worker.request_generate(turn)
    qtbot.waitUntil(lambda: bool(failed or finished), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
    for signal, slot in slots:
        signal.disconnect(slot)
    return (started[0] if started else None), (failed[0] if failed else None)


def test_plain_completion_sends_the_texts_tokens_only(qtbot, window):
    messages = (SYSTEM, {"role": "user", "content": "t1 t2"}, {"role": "assistant", "content": " t3"},
                {"role": "user", "content": " t4"})
    start, problem = generate(qtbot, window, Turn(PARAMS, messages=messages, mode="completion"))
    assert problem is None
    tokenizer = window.worker._engine.tokenizer  # a test's look: read only while the worker is idle
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    assert list(start.prompt.token_ids) == bos + tokenizer.encode("t1 t2 t3 t4") == bos + [1, 2, 3, 4]
    chat_start, _ = generate(qtbot, window, Turn(PARAMS, messages=messages))
    assert len(chat_start.prompt.token_ids) > len(start.prompt.token_ids)  # the chat template's tokens


def test_a_template_override_is_what_the_model_gets(qtbot, window):
    messages = ({"role": "user", "content": "t1 t2"},)
    start, problem = generate(qtbot, window, Turn(PARAMS, messages=messages, template=OVERRIDE))
    assert problem is None and list(start.prompt.token_ids) == [5, 1, 2, 6, 7]


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
])
def test_a_payload_in_an_override_runs_nothing_and_the_turn_fails_with_the_reason(qtbot, window, payload, tmp_path):
    marker = tmp_path / "pwned"
    source = payload.replace("{marker}", str(marker))
    start, problem = generate(qtbot, window, Turn(PARAMS, messages=({"role": "user", "content": "t1"},),
                                                  template=source))
    assert start is None and "chat template" in problem and "sandbox" in problem
    assert not marker.exists()
    with qtbot.waitSignal(window.worker.count_failed, timeout=TIMEOUT) as failed:
        window.worker.request_count(({"role": "user", "content": "t1"},), {"template": source})
    assert "chat template" in failed.args[0] and not marker.exists()


def long_conversation(turns: int) -> tuple[dict, ...]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [{"role": "user", "content": f"t{10 + i} t1 t2 t3 t4"},
                     {"role": "assistant", "content": f"t{40 + i} t1 t2 t3 t4"}]
    return tuple(messages + [{"role": "user", "content": "t99 t1 t2"}])


def test_drop_oldest_keeps_the_system_prompt_and_the_newest_turn(qtbot, window):
    messages = long_conversation(8)
    engine, context = window.worker._engine, window.worker._facts.context
    assert len(engine.chat_prompt_ids(list(messages))) > context
    start, problem = generate(qtbot, window, Turn(PARAMS, messages=messages, overflow="drop_oldest"))
    assert problem is None and start.dropped > 0 and start.dropped % 2 == 0  # whole turns
    kept = [SYSTEM, *messages[1 + start.dropped:]]
    assert kept[-1] == messages[-1]
    assert list(start.prompt.token_ids) == engine.chat_prompt_ids(kept)
    assert len(start.prompt.token_ids) + PARAMS.max_new_tokens <= context  # room for the reply
    one_turn_more = [SYSTEM, *messages[start.dropped - 1:]]
    assert len(engine.chat_prompt_ids(one_turn_more)) + PARAMS.max_new_tokens > context  # no more dropped than needed
    _, refused = generate(qtbot, window, Turn(PARAMS, messages=messages))  # overflow "fail": as before
    assert "does not fit" in refused


def test_drop_oldest_still_refuses_when_the_newest_turn_alone_is_too_long(qtbot, window):
    messages = (SYSTEM, {"role": "user", "content": "t1 " * 80})
    _, refused = generate(qtbot, window, Turn(PARAMS, messages=messages, overflow="drop_oldest"))
    assert "does not fit" in refused


@pytest.mark.parametrize("options", [{}, {"mode": "chat", "template": OVERRIDE}, {"mode": "completion"},
                                     {"mode": "chat", "template": None, "tools": "auto"}])
def test_the_count_is_the_engines_prompt_length(qtbot, window, options):
    messages = long_conversation(2)
    with qtbot.waitSignal(window.worker.counted, timeout=TIMEOUT) as counted:
        window.worker.request_count(messages, options)
    engine = window.worker._engine
    if options.get("mode") == "completion":
        expected = engine.completion_prompt_ids(list(messages))
    else:
        expected = engine.chat_prompt_ids(list(messages), template=options.get("template"))
    assert counted.args[0] == len(expected)


def test_the_models_template_arrives_after_a_load(qtbot, settings, hf_checkpoint):  # noqa: F811
    from app.main_window import MainWindow

    directory, _ = hf_checkpoint("llama")
    window = MainWindow(settings=settings, autoload=False)
    qtbot.addWidget(window)
    panel = TemplatePanel()
    qtbot.addWidget(panel)
    window.worker.template.connect(panel.set_model_template)
    window.worker.builtin_templates.connect(panel.set_builtin_templates)
    try:
        with qtbot.waitSignals([window.worker.template, window.worker.builtin_templates], timeout=TIMEOUT):
            window.load_model(str(directory), LoadOptions(device="cpu"))
        qtbot.waitUntil(lambda: "ships no chat template" in panel.source.toPlainText(), timeout=10_000)
        assert panel.choice.findData("Gemma") > 0
    finally:
        close_window(window)


def test_turn_options_from_the_controller_reach_the_prompt(qtbot, window):
    if not hasattr(window.controller, "turn_options"):
        pytest.skip("the chat controller does not read turn_options yet")
    window.controller.turn_options = lambda: {"mode": "completion"}
    started = []
    window.worker.turn_started.connect(started.append)
    chat(qtbot, window, "t1 t2 t3")
    assert list(started[0].prompt.token_ids)[-3:] == [1, 2, 3] and len(started[0].prompt.token_ids) <= 4


def test_the_template_choice_survives_a_restart(qtbot, tmp_path):
    from engine.text.builtin_templates import BUILTIN_TEMPLATES

    panel = TemplatePanel()
    qtbot.addWidget(panel)
    panel.set_builtin_templates(BUILTIN_TEMPLATES)
    panel.choice.setCurrentIndex(panel.choice.findData("edited"))
    panel.source.setPlainText(OVERRIDE)
    panel.mode.setCurrentIndex(panel.mode.findData("completion"))
    panel.overflow.setCurrentIndex(panel.overflow.findData("drop_oldest"))
    path = str(tmp_path / "settings.ini")
    Settings(path=path).set_template_state(panel.state())
    restored = TemplatePanel()
    qtbot.addWidget(restored)
    restored.restore(Settings(path=path).template_state())
    restored.set_builtin_templates(BUILTIN_TEMPLATES)
    assert restored.options() == panel.options() == {"mode": "completion", "template": OVERRIDE,
                                                     "overflow": "drop_oldest"}


@pytest.mark.parametrize("shape,samples", [({"n": 2}, 2), ({"n": 1, "best_of": 3}, 1), ({"beams": 2}, 2)])
def test_n_best_of_and_beams_reach_the_engine(qtbot, window, shape, samples):
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=3)
    with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT) as done:
        window.worker.request_generate(Turn(params, messages=({"role": "user", "content": "t1"},), **shape))
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
    assert not done.args[0].error and len(done.args[0].results) == samples


def test_a_beam_search_reply_keeps_as_many_branches_as_beams(qtbot, window):
    """Beam search reports every finished hypothesis (often more than the width); the chat keeps the best
    `beams` as sibling replies (review of issue 20: 3 beams showed as ‹ 1/5 ›)."""
    window.controller.turn_options = lambda: {"beams": 3}
    window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=6))
    with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT):
        window.controller.submit("t1 t2")
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
    reply = window.controller.tree.leaf()
    assert window.controller.tree.position(reply.id)[1] == 3
