"""Speculative decoding through the app: the sampler panel's drafter reaches the worker's requests, the
records come back marked, and greedy text is what plain decoding writes."""
from __future__ import annotations

from tests.app.test_main_window import chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_drafter_chosen_in_the_sampler_panel_speculates_and_marks_tokens(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        chat(qtbot, window, "t1 t2 t3 t1 t2 t3 t1 t2", max_new_tokens=16)
        plain = window.controller.messages[-1]["content"]
        assert window.controller.steps and all(r.spec is None for r in window.controller.steps)
        window.sampler.drafter.setCurrentText("self-layers:1")
        window.sampler.spec_k.setValue(3)
        window.controller.clear()  # the same conversation again, now speculative
        chat(qtbot, window, "t1 t2 t3 t1 t2 t3 t1 t2", max_new_tokens=16)
        steps = window.controller.steps
        assert window.controller.messages[-1]["content"] == plain  # greedy: the same answer
        assert any(r.spec is not None and r.spec.drafted for r in steps)
        assert {r.spec_role for r in steps} & {"accepted", "resampled", "bonus"}
        tokens = window.chat.reply_tokens(-1)  # the reply's tokens carry their marks, and the legend says what they mean
        assert {t[3] for t in tokens} & {"accepted", "resampled", "bonus"} and not window.chat.spec_legend.isHidden()
    finally:
        close_window(window)
