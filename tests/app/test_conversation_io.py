"""Every conversation the app can save reopens (issue 18): tool calls and tool results included, in the
shapes app/engine_worker.py and app/chat_controller.py write them, through File → Save / Open in the
window; anything else is refused with a clear reason, and nothing in a file is executed."""
from __future__ import annotations

import json

import pytest

from app import conversation_io
from app.main_window import MainWindow
from app.settings import Settings
from tests.app.test_kill_restore import TOOL_MESSAGES

OPENAI_STYLE = [{"role": "system", "content": "Use the tools."},
                {"role": "user", "content": "2+2?", "name": "ada"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "4"}]


def menu_action(window, menu: str, text: str):
    actions = next(a for a in window.menuBar().actions() if a.text() == menu).menu().actions()
    return next(a for a in actions if a.text() == text)


def write(path, messages, **extra):
    path.write_text(json.dumps({"format": conversation_io.FORMAT, "system": "", "messages": messages, **extra}))
    return path


def test_tool_messages_survive_save_and_load(tmp_path):
    conversation_io.save(tmp_path / "c.json", "Be exact.", TOOL_MESSAGES)
    assert conversation_io.load(tmp_path / "c.json") == ("Be exact.", TOOL_MESSAGES)
    system, messages = conversation_io.load(write(tmp_path / "o.json", OPENAI_STYLE))
    assert messages[2]["content"] == "" and messages[2]["tool_calls"] == OPENAI_STYLE[2]["tool_calls"]
    assert messages[3] == OPENAI_STYLE[3] and messages[1] == OPENAI_STYLE[1]


def test_unknown_keys_are_dropped(tmp_path):
    _, messages = conversation_io.load(write(tmp_path / "c.json", [{"role": "user", "content": "hi", "x": 1}]))
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("message, reason", [
    ({"role": "function", "content": "x"}, "message 1 has the unknown role 'function'"),
    ({"role": 7}, "unknown role 7"),
    ("hello", "is not a {role, content} object"),
    ({"role": "user", "content": ["x"]}, "(user) has no text content"),
    ({"role": "tool", "content": 4}, "(tool) has no text content"),
    ({"role": "tool", "content": "4", "tool_call_id": 1}, "tool_call_id that is not text"),
    ({"role": "user", "content": "", "tool_calls": [{}]}, "only the assistant makes"),
    ({"role": "assistant", "content": "", "tool_calls": []}, "not a non-empty list"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}, "without a function name"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]},
     "neither an object nor text"),
    ({"role": "assistant", "content": "", "tool_calls": [{"type": "code", "function": {"name": "f"}}]},
     "not a function call"),
])
def test_bad_messages_are_refused_with_the_reason(tmp_path, message, reason):
    with pytest.raises(ValueError) as error:
        conversation_io.load(write(tmp_path / "c.json", [message]))
    assert reason in str(error.value) and "c.json" in str(error.value)


def test_a_tool_conversation_saved_from_the_window_reopens(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    window = MainWindow(settings=Settings(path=str(tmp_path / "s.ini")), autoload=False, data_dir=tmp_path / "data",
                        offer_restore=False)
    qtbot.addWidget(window)
    try:
        window.chat.system.setText("Be exact.")
        window.controller.messages = [dict(m) for m in TOOL_MESSAGES]
        path = str(tmp_path / "tools.json")
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (path, "JSON (*.json)"))
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (path, "JSON (*.json)"))
        menu_action(window, "&File", "&Save conversation…").trigger()
        window.controller.clear()
        window.chat.system.setText("")
        menu_action(window, "&File", "Open &conversation…").trigger()  # a failure would show a message box
        assert window.controller.messages == TOOL_MESSAGES and window.chat.system.text() == "Be exact."
        assert "17 * 23 = 391." in window.chat.transcript_text()
    finally:
        window.close()
