"""The context meter in the window equals the engine's own count of the conversation's prompt, and flags a
message being typed that would not fit (issue 20 point 4)."""
from __future__ import annotations

from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_the_meter_counts_what_the_engine_counts_and_warns_before_sending(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory, context_length=64)
    try:
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=4)
        engine = window.worker._engine  # a test's look: the worker is idle
        expected = len(engine.chat_prompt_ids(list(window.meter.messages())))
        qtbot.waitUntil(lambda: window.meter.used == expected, timeout=TIMEOUT)
        assert window.chat.context_meter.format().startswith(f"{expected} / 64 tokens")
        assert not window.chat.context_warning()
        first_user = next(v for v in window.chat._turns if v.role == "user")
        assert first_user.token_count == len(engine.chat_prompt_ids([window.controller.messages[0]]))
        window.chat.input.setPlainText(" ".join(f"t{i}" for i in range(60)))  # far more than the room left
        qtbot.waitUntil(window.chat.context_warning, timeout=TIMEOUT)
    finally:
        close_window(window)
