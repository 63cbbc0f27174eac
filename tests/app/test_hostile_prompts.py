"""The same odd prompts in the GUI (issue 10): an empty input sends nothing; a prompt longer than the
context is a clear error that keeps the conversation and leaves the app answering; undecodable text,
control characters and one very long line are answered."""
from __future__ import annotations

import json

import pytest
from PySide6.QtWidgets import QApplication

from app.main_window import MainWindow
from app.settings import Settings
from engine.records import LoadOptions, SamplingParams

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tmp_path, hf_checkpoint):
    directory, _ = hf_checkpoint("llama", max_position_embeddings=64)
    window = MainWindow(settings=Settings(path=str(tmp_path / "s.ini")), autoload=False, data_dir=tmp_path / "data")
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.worker.loaded, timeout=TIMEOUT):
        window.load_model(str(directory), LoadOptions(device="cpu"))
    qtbot.waitUntil(window.chat.send_button.isEnabled, timeout=10_000)
    window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))
    yield window
    window.close()


def send(qtbot, window, text: str, typed: bool = True) -> None:
    with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT):
        if typed:
            window.chat.input.setPlainText(text)
            window.chat.send_button.click()
        else:  # text no keyboard produces (lone surrogates) goes straight to the controller
            window.controller.submit(text)
    # waitSignal's callback runs in the worker thread as `finished` is emitted: the GUI-thread slots of that
    # emission (the controller's, the autosave's) are still queued. Deliver them before looking.
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
    QApplication.processEvents()
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)


def test_empty_input_sends_nothing(qtbot, window):
    for text in ("", "   ", "\n\t\n"):
        window.chat.input.setPlainText(text)
        window.chat.send_button.click()
    qtbot.wait(200)
    assert window.controller.messages == [] and not window.controller.busy


def test_prompt_longer_than_the_context(qtbot, window):
    with qtbot.waitSignal(window.worker.failed, timeout=TIMEOUT):  # refused before any compute
        window.chat.input.setPlainText("t1 " * 200)
        window.chat.send_button.click()
    qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
    qtbot.wait(100)
    assert QApplication.activeModalWidget() is None  # said once, inline and in the status line: no modal box
    assert "context holds 64" in window.statusBar().currentMessage()
    assert "context holds 64" in window.chat.transcript_text()
    assert window.controller.messages == []  # the message did not stay in the model's context...
    assert window.chat.input.toPlainText().startswith("t1 t1")  # ...it is back in the box, to edit or drop
    window.chat.input.clear()
    send(qtbot, window, "t1 t2")  # and the next message is answered, no Clear needed
    assert [m["role"] for m in window.controller.messages] == ["user", "assistant"]


@pytest.mark.parametrize("text,typed", [("t1 \udcff\ud800 t2", False), ("t1 \x00\x07\x1b[2J t2", True),
                                        ("t3" * 100_000, True)], ids=["surrogates", "control", "long line"])
def test_odd_text_is_answered(qtbot, window, text, typed):
    send(qtbot, window, text, typed)
    assert [m["role"] for m in window.controller.messages] == ["user", "assistant"]
    window.session.autosaver.flush()  # and the autosave holds it exactly (lone surrogates as JSON escapes)
    saved = json.loads(window.session.autosaver.path.read_text(encoding="utf-8"))
    assert saved["messages"][0]["content"] == text
