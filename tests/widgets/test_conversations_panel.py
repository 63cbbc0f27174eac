"""The conversations panel with plain entries: search filters titles and text, every action's signal
carries the selected conversation's path, unreadable entries can only be deleted, and it fits a dock's
width."""
from __future__ import annotations

import time

import pytest
from PySide6.QtCore import Qt

from widgets.conversations_panel import ConversationEntry, ConversationsPanel, describe, entry_matches

NOW = time.time()
ENTRIES = [
    ConversationEntry("/c/a.json", "Paris and the Seine", NOW - 60, 6, text="What is the capital of France?"),
    ConversationEntry("/c/b.json", "Sums with the calculator", NOW - 3600, 4, text="calculator 2+2"),
    ConversationEntry("/c/broken.json", "broken", NOW - 7200, 0, error="not a readable conversation file"),
    ConversationEntry("/c/c.json", "Rust borrow checker, explained slowly with examples and a long title",
                      NOW - 86400 * 3, 12, text="fn main() {}"),
    ConversationEntry("/c/d.json", "Haiku about attention heads", NOW - 86400 * 5, 2, text="nine heads look back"),
    ConversationEntry("/c/e.json", "Top-p versus min-p", NOW - 86400 * 9, 8, text="nucleus sampling"),
    ConversationEntry("/c/f.json", "Why is the KV cache paged?", NOW - 86400 * 20, 10, text="blocks of 16 tokens"),
    ConversationEntry("/c/g.json", "A story in French", NOW - 86400 * 40, 1, text="Il était une fois"),
]


@pytest.fixture
def panel(qtbot):
    p = ConversationsPanel()
    qtbot.addWidget(p)
    p.set_entries(ENTRIES)
    return p


def test_lists_in_the_order_given_and_search_filters_titles_and_text(panel):
    assert panel.shown_paths() == [e.path for e in ENTRIES]
    panel.search.setText("FRANCE")  # in a message, any case
    assert panel.shown_paths() == ["/c/a.json"] and panel.selected_path() == "/c/a.json"
    panel.search.setText("heads")  # a title
    assert panel.shown_paths() == ["/c/d.json"]
    panel.search.setText("no such thing")
    assert panel.shown_paths() == [] and panel.selected_path() == "" and not panel.rename_button.isEnabled()
    panel.search.clear()
    assert len(panel.shown_paths()) == len(ENTRIES)
    assert entry_matches("SEINE", ENTRIES[0]) and not entry_matches("seine", ENTRIES[1])


def test_signals_carry_the_selected_path(panel, qtbot):
    panel.select("/c/b.json")
    with qtbot.waitSignal(panel.open_requested) as opened:
        qtbot.keyClick(panel.list, Qt.Key_Return)  # Enter opens
    assert opened.args == ["/c/b.json"]
    with qtbot.waitSignal(panel.open_requested) as opened:
        panel.list.itemActivated.emit(panel.list.item(3))  # what a double-click sends
    assert opened.args == ["/c/c.json"]
    panel.select("/c/e.json")
    with qtbot.waitSignal(panel.delete_requested) as deleted:
        panel.delete_button.click()
    assert deleted.args == ["/c/e.json"]
    with qtbot.waitSignal(panel.export_requested) as exported:
        panel.export_markdown.trigger()
    assert exported.args == ["/c/e.json", "markdown"]
    with qtbot.waitSignal(panel.export_requested) as exported:
        panel.export_json.trigger()
    assert exported.args == ["/c/e.json", "json"]
    with qtbot.waitSignal(panel.new_requested):
        panel.new_button.click()
    panel.search.setText("paris")
    with qtbot.waitSignal(panel.open_requested) as opened:
        qtbot.keyClick(panel.search, Qt.Key_Return)  # Enter in the search box opens the match
    assert opened.args == ["/c/a.json"]


def test_rename_in_place_emits_the_new_title_once(panel, qtbot):
    panel.select("/c/d.json")
    panel.rename_selected()
    editor = panel.list.findChild(type(panel.search))  # the item's line edit
    assert editor is not None and editor.text() == "Haiku about attention heads"
    with qtbot.waitSignal(panel.rename_requested) as renamed:
        editor.setText("  Attention   haiku ")
        qtbot.keyClick(editor, Qt.Key_Return)
    assert renamed.args == ["/c/d.json", "Attention haiku"]
    with qtbot.assertNotEmitted(panel.rename_requested):
        panel.set_entries(ENTRIES)  # refilling the list is not a rename
        panel.set_current("/c/a.json")
        panel.list.item(0).setText("   ")  # an emptied title is refused, the old one comes back
    assert panel.list.item(0).text() == "Paris and the Seine"


def test_an_unreadable_entry_can_only_be_deleted(panel, qtbot):
    panel.select("/c/broken.json")
    assert not panel.rename_button.isEnabled() and not panel.export_button.isEnabled()
    assert panel.delete_button.isEnabled()
    with qtbot.assertNotEmitted(panel.open_requested):
        qtbot.keyClick(panel.list, Qt.Key_Return)
    assert describe(ENTRIES[2]).startswith("unreadable: ")
    assert describe(ENTRIES[0], NOW).startswith("6 messages · today ")
    assert describe(ENTRIES[7]).startswith("1 message · 20")


def test_selection_survives_a_refresh_and_the_panel_fits_a_dock(panel, qtbot):
    panel.select("/c/f.json")
    panel.set_current("/c/a.json")
    panel.set_entries(list(reversed(ENTRIES)))
    assert panel.selected_path() == "/c/f.json"
    assert panel.list.item(len(ENTRIES) - 1).font().bold()  # the open one, now last
    panel.resize(360, 600)
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.minimumSizeHint().width() <= 340
