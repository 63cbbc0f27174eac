"""The list of saved conversations: a search box over titles and message text, each conversation as
its title over its size and date, and the actions on it (new, open, rename in place, delete, export).
It only shows entries and emits what the user asks for; files, titles and trash are the app's."""
from __future__ import annotations

import time
from dataclasses import dataclass

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QFont, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLineEdit, QListWidget, QListWidgetItem, QMenu,
                               QPushButton, QStyle, QStyledItemDelegate, QToolButton, QVBoxLayout, QWidget)

PATH = Qt.UserRole
ENTRY = Qt.UserRole + 1


@dataclass(frozen=True)
class ConversationEntry:
    """What the panel draws of one conversation. Any object with these attributes will do (the app's
    library entries have them)."""

    path: str
    title: str
    modified: float  # seconds since the epoch
    messages: int
    error: str = ""  # why it cannot be read ("" when it can): listed greyed, only deletable
    text: str = ""  # its messages' text, searched besides the title


def entry_matches(query: str, entry) -> bool:
    """Case-insensitive, in the title or the messages' text (app/library.py's `matches`, the same rule)."""
    q = query.strip().casefold()
    return not q or q in entry.title.casefold() or q in getattr(entry, "text", "").casefold()


def describe(entry, now: float | None = None) -> str:
    """The line under a title: '12 messages · today 14:05', or why the file cannot be read."""
    if entry.error:
        return f"unreadable: {entry.error}"
    now = time.time() if now is None else now
    when = time.localtime(entry.modified)
    same_day = time.strftime("%Y%m%d", when) == time.strftime("%Y%m%d", time.localtime(now))
    date = time.strftime("today %H:%M" if same_day else "%Y-%m-%d %H:%M", when)
    count = f"{entry.messages} message" + ("" if entry.messages == 1 else "s")
    return f"{count} · {date}"


class _TwoLineDelegate(QStyledItemDelegate):
    """Title (elided, bold for the open conversation) over a smaller grey line of size and date."""

    def sizeHint(self, option, index) -> QSize:
        height = option.fontMetrics.height()
        return QSize(option.rect.width(), 2 * height + height // 2 + 8)

    def paint(self, painter, option, index) -> None:
        self.initStyleOption(option, index)
        entry = index.data(ENTRY)
        text, option.text = option.text, ""  # the style draws selection and focus; the text is drawn here
        option.widget.style().drawControl(QStyle.CE_ItemViewItem, option, painter, option.widget)
        selected = option.state & QStyle.State_Selected
        unreadable = QPalette.PlaceholderText if entry.error else QPalette.Text  # greyed, still legible
        title_colour = option.palette.color(QPalette.HighlightedText if selected else unreadable)
        rect = option.rect.adjusted(8, 4, -8, -4)
        painter.save()
        title_font = QFont(option.font)  # bold for the open conversation (its item's font)
        title_font.setItalic(bool(entry.error))
        painter.setFont(title_font)
        painter.setPen(title_colour)
        line = option.fontMetrics.height()
        top = QRect(rect.left(), rect.top(), rect.width(), line)
        painter.drawText(top, Qt.AlignLeft | Qt.AlignVCenter,
                         painter.fontMetrics().elidedText(text, Qt.ElideRight, rect.width()))
        small = QFont(option.font)
        small.setBold(False)
        small.setPointSizeF(max(option.font.pointSizeF() * 0.85, 7))
        painter.setFont(small)
        # The theme's placeholder grey: greyer than text, yet readable on either theme's base.
        detail = option.palette.color(QPalette.HighlightedText if selected else QPalette.PlaceholderText)
        painter.setPen(detail)
        bottom = QRect(rect.left(), top.bottom() + 3, rect.width(), rect.bottom() - top.bottom() - 3)
        painter.drawText(bottom, Qt.AlignLeft | Qt.AlignVCenter,
                         painter.fontMetrics().elidedText(describe(entry), Qt.ElideRight, rect.width()))
        painter.restore()


class ConversationsPanel(QWidget):
    open_requested = Signal(str)  # a conversation's path
    new_requested = Signal()
    rename_requested = Signal(str, str)  # path, the new title
    delete_requested = Signal(str)
    export_requested = Signal(str, str)  # path, "markdown" or "json"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._entries: list = []
        self._current = ""  # the path of the conversation open in the window
        self._filling = False  # set_entries edits items: those are not renames
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.search = QLineEdit(placeholderText="Search titles and messages", clearButtonEnabled=True)
        self.list = QListWidget()
        self.list.setItemDelegate(_TwoLineDelegate(self.list))
        self.list.setEditTriggers(QAbstractItemView.EditKeyPressed)  # F2; double-click opens
        self.list.setUniformItemSizes(True)
        self.list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.new_button = QPushButton("New", toolTip="Start a new conversation")
        self.rename_button = QPushButton("Rename", toolTip="Rename the selected conversation (F2)")
        self.delete_button = QPushButton("Delete", toolTip="Move the selected conversation to the trash")
        self.export_button = QToolButton(text="Export", popupMode=QToolButton.InstantPopup,
                                         toolTip="Export the selected conversation")
        self.export_menu = QMenu(self.export_button)
        self.export_markdown = self.export_menu.addAction("Export Markdown…", lambda: self._export("markdown"))
        self.export_json = self.export_menu.addAction("Export JSON…", lambda: self._export("json"))
        self.export_button.setMenu(self.export_menu)
        self.search.textChanged.connect(self._filter)
        self.search.returnPressed.connect(self._open_first_shown)
        self.list.itemActivated.connect(lambda item: self._open(item))  # double-click or Enter
        self.list.itemChanged.connect(self._renamed)
        self.list.currentItemChanged.connect(lambda *_: self._update_actions())
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.new_button.clicked.connect(self.new_requested)
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button.clicked.connect(self._delete)
        self._update_actions()

    def _layout(self) -> None:
        buttons = QHBoxLayout()
        for w in (self.new_button, self.rename_button, self.delete_button, self.export_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)

    # -- what the app shows --------------------------------------------------------------------
    def set_entries(self, entries) -> None:
        """The conversations, newest first (shown in the order given); the selection stays on its path."""
        selected = self.selected_path()
        self._entries = list(entries)
        self._filling = True
        self.list.clear()
        for entry in self._entries:
            item = QListWidgetItem(entry.title)
            item.setData(PATH, str(entry.path))
            item.setData(ENTRY, entry)
            item.setToolTip(f"{entry.title}\n{describe(entry)}\n{entry.path}")
            if not entry.error:
                item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.list.addItem(item)
            if str(entry.path) == selected:
                self.list.setCurrentItem(item)
        self._filling = False
        self._mark_current()
        self._filter(self.search.text())

    def set_current(self, path: str) -> None:
        """The conversation open in the window: its title is shown bold."""
        self._current = str(path)
        self._mark_current()

    def shown_paths(self) -> list[str]:
        """The paths the list shows now (after the search), top to bottom."""
        return [self.list.item(i).data(PATH) for i in range(self.list.count()) if not self.list.item(i).isHidden()]

    def selected_path(self) -> str:
        item = self.list.currentItem()
        return item.data(PATH) if item is not None and not item.isHidden() else ""

    def select(self, path: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(PATH) == str(path):
                self.list.setCurrentRow(i)

    def rename_selected(self) -> None:
        """Edit the selected title in place; the new one is emitted when the edit ends."""
        item = self.list.currentItem()
        if item is not None and item.flags() & Qt.ItemIsEditable:
            self.list.editItem(item)

    # -- inside --------------------------------------------------------------------------------
    def _mark_current(self) -> None:
        self._filling = True
        for i in range(self.list.count()):
            item = self.list.item(i)
            font = QFont(self.list.font())
            font.setBold(item.data(PATH) == self._current)
            item.setFont(font)
        self._filling = False

    def _filter(self, query: str) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setHidden(not entry_matches(query, item.data(ENTRY)))
        current = self.list.currentItem()
        if current is None or current.isHidden():
            shown = [self.list.item(i) for i in range(self.list.count()) if not self.list.item(i).isHidden()]
            self.list.setCurrentItem(shown[0] if shown else None)
        self._update_actions()

    def _update_actions(self) -> None:
        item = self.list.currentItem()
        entry = item.data(ENTRY) if item is not None and not item.isHidden() else None
        readable = entry is not None and not entry.error
        self.rename_button.setEnabled(readable)
        self.export_button.setEnabled(readable)
        self.delete_button.setEnabled(entry is not None)

    def _open(self, item) -> None:
        if item is not None and not item.data(ENTRY).error:
            self.open_requested.emit(item.data(PATH))

    def _open_first_shown(self) -> None:
        """Enter in the search box opens the selected match (the first, unless the user moved)."""
        self._open(self.list.currentItem() if self.selected_path() else None)

    def _renamed(self, item) -> None:
        if self._filling:
            return
        entry = item.data(ENTRY)
        title = " ".join(item.text().split())
        if title and title != entry.title:
            self.rename_requested.emit(item.data(PATH), title)
        else:  # emptied or unchanged: the old title stays
            self._filling = True
            item.setText(entry.title)
            self._filling = False

    def _delete(self) -> None:
        if path := self.selected_path():
            self.delete_requested.emit(path)

    def _export(self, kind: str) -> None:
        item = self.list.currentItem()
        if item is not None and not item.isHidden() and not item.data(ENTRY).error:
            self.export_requested.emit(item.data(PATH), kind)

    def _context_menu(self, position) -> None:
        item = self.list.itemAt(position)
        if item is None:
            return
        self.list.setCurrentItem(item)
        readable = not item.data(ENTRY).error
        menu = QMenu(self)
        menu.addAction("Open", lambda: self._open(item)).setEnabled(readable)
        menu.addAction("Rename", self.rename_selected).setEnabled(readable)
        menu.addAction("Export Markdown…", lambda: self._export("markdown")).setEnabled(readable)
        menu.addAction("Export JSON…", lambda: self._export("json")).setEnabled(readable)
        menu.addSeparator()
        menu.addAction("Delete", self._delete)
        menu.popup(self.list.viewport().mapToGlobal(position))
