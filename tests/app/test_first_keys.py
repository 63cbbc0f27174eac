"""The first keys a user meets, in the real window on a tiny model (issue 18): Esc stops a streaming
reply (the reply ends as stopped, and the conversation goes on), and "Offer tools" follows the loaded
model's chat template: disabled, with the reason, when the template takes no tools."""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from engine.records import SamplingParams
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 - fixture


def test_escape_stops_the_reply(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        window.show()
        qtbot.waitExposed(window)
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
        # past its end token: a tiny model's steps take ~1 ms, so on a loaded machine the 168 steps before
        # this seed's end token went by before the key press and the reply ended "eos", not "cancelled"
        window.sampler.set_params(SamplingParams(temperature=1.0, max_new_tokens=2000, seed=7, ignore_eos=True))
        with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT) as blocker:
            window.chat.input.setPlainText("t1 t2 t3")
            window.chat.send_button.click()
            qtbot.waitUntil(lambda: len(window.controller.steps) >= 3, timeout=TIMEOUT)
            window.chat.input.setFocus()  # where the user is typing: the input says "Esc to stop"
            seen_at_stop = len(window.controller.steps) + len(window.hub.pending)
            qtbot.keyClick(window.chat.input, Qt.Key_Escape)
        done = blocker.args[0]
        qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
        assert done.results[0].finish_reason == "cancelled"
        # the worker checks the stop flag before every step; the GUI may be one redraw (33 ms) behind it
        assert len(done.results[0].token_ids) <= seen_at_stop + 32
        assert window.chat.transcript_text().rstrip().endswith("[stopped]")
        assert [m["role"] for m in window.controller.messages] == ["user", "assistant"]
        chat(qtbot, window, "t4 t5")  # the app keeps working
        assert len(window.controller.messages) == 4
    finally:
        close_window(window)


def test_offer_tools_follows_the_models_template(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        facts, box = window.models.facts, window.sampler.offer_tools
        assert not facts.supports_tools  # the tiny tokenizer's template has no `tools`
        assert not box.isEnabled() and "takes no tools" in box.toolTip()
        window.models.on_loaded(dataclasses.replace(facts, supports_tools=True))  # a model whose template does
        assert box.isEnabled() and "takes no tools" not in box.toolTip()
    finally:
        close_window(window)
