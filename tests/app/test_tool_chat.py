"""Tool calling in the app, offscreen: a tiny byte-level model whose template takes tools, the calculator
offered from the sampler panel, the model's call answered by the calculator and the chat going on."""
from __future__ import annotations

import pytest

from engine.records import SamplingParams
from engine.text.tools import calculate
from tests.app.test_main_window import TIMEOUT, close_window, open_window, settings  # noqa: F401 - fixture
from tests.engine.test_tool_calling import write_byte_tokenizer


@pytest.fixture
def tool_model(tmp_path):
    from tests.tiny_models import build_hf_model

    model = build_hf_model("qwen2", seed=3, vocab_size=258, max_position_embeddings=2048)
    model.save_pretrained(tmp_path / "tiny")
    write_byte_tokenizer(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_calculator_call_is_answered_and_the_chat_goes_on(qtbot, settings, tool_model):  # noqa: F811
    window = open_window(qtbot, settings, tool_model)
    try:
        window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=120))
        window.sampler.offer_tools.setChecked(True)
        controller = window.controller
        controller.tool_choice = "required"  # a random model would rarely choose a call on its own
        window.chat.input.setPlainText("What is 17 * 23?")
        window.chat.send_button.click()
        qtbot.waitUntil(lambda: len(controller.messages) >= 4 and not controller.busy, timeout=TIMEOUT)
        user, call, result, answer = controller.messages[:4]
        assert user == {"role": "user", "content": "What is 17 * 23?"}
        (tool_call,) = call["tool_calls"]
        expression = tool_call["function"]["arguments"]["expression"]
        assert tool_call["function"]["name"] == "calculator"
        assert result == {"role": "tool", "name": "calculator", "content": calculate(expression)}
        assert answer["role"] == "assistant" and "tool_calls" not in answer  # the chat went on in prose
        assert f"[tool] calculator({tool_call['function']['arguments']}) = {result['content']}" \
            in window.chat.transcript_text()
    finally:
        close_window(window)
