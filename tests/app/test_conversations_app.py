"""The conversations list in the window (issue 20 point 7): the conversation on screen is kept in the library
after each reply, New starts an empty one and keeps the old, opening brings every message back, renaming
sets the title, deleting the open one clears the chat; F1 and About open."""
from __future__ import annotations

from PySide6.QtWidgets import QApplication

from tests.app.test_main_window import chat, close_window, open_window, settings  # noqa: F401 (fixture)


def test_conversations_are_kept_listed_reopened_renamed_and_deleted(qtbot, settings, hf_checkpoint, tmp_path,
                                                                    monkeypatch):  # noqa: F811
    monkeypatch.setenv("GLASSBOX_DATA_DIR", str(tmp_path / "data"))
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        conversations = window.conversations
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=4)
        first = list(window.controller.messages)
        entries = conversations.library.entries()
        assert len(entries) == 1 and entries[0].messages == len(first)
        conversations.new()
        assert window.controller.messages == []
        chat(qtbot, window, "t7 t8", max_new_tokens=3)
        assert len(conversations.library.entries()) == 2
        conversations.show()
        assert len(conversations.panel.shown_paths()) == 2
        old = str(entries[0].path)
        conversations.open(old)
        assert window.controller.messages == first
        conversations.rename(old, "My first chat")
        assert window.controller.title == "My first chat"
        assert any(e.title == "My first chat" for e in conversations.library.entries())
        conversations.delete(old)
        assert window.controller.messages == [] and len(conversations.library.entries()) == 1
    finally:
        close_window(window)


def test_help_sheet_and_about_open(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        help_menu = next(a for a in window.menuBar().actions() if a.text() == "&Help").menu()
        for action in help_menu.actions():
            action.trigger()
        QApplication.processEvents()
        titles = [w.windowTitle() for w in QApplication.topLevelWidgets() if w.isVisible()]
        assert any("hortcut" in t for t in titles) and any("About" in t for t in titles), titles
    finally:
        close_window(window)
