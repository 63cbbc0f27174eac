"""Help: the sheet of keyboard shortcuts (F1) and About (the versions of Glassbox, torch, Qt, PySide6 and
Python, and the loaded model). The sheet's list is written here, by hand, so each key says what it does;
tests/app/test_help.py checks it against the shortcuts the window really defines. Both dialogs are
non-modal: they never block the window, a streaming reply, or a test."""
from __future__ import annotations

import html
import importlib.metadata
import platform
import tomllib
from pathlib import Path

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHeaderView, QLabel, QTableWidget,
                               QTableWidgetItem, QVBoxLayout)

from engine.records import ModelFacts

# The window's shortcuts (QShortcut or a menu action's key), in Qt's portable spelling.
SHORTCUTS = [
    ("Ctrl+Return", "Send the message"),
    ("Esc", "Stop the reply being generated"),
    ("Ctrl+O", "Open a model file"),
    ("Ctrl+S", "Save the conversation"),
    ("Ctrl+N", "A new conversation (this one stays in the list)"),
    ("Ctrl+Shift+L", "The list of conversations: open, rename, delete, search, export"),
    ("Ctrl+Q", "Quit"),
    ("F1", "This sheet of shortcuts"),
]

# Keys that act inside one list or field (item views' own keys, not window shortcuts).
FIELD_KEYS = [
    ("Return", "Message box: a new line (Ctrl+Return sends)"),
    ("Return", "Conversations list or search: open the selected one"),
    ("F2", "Conversations list: rename the selected one"),
]


def shortcuts() -> list[tuple[str, str]]:
    """(keys in Qt's portable text, what they do) for every shortcut the window defines."""
    return list(SHORTCUTS)


def portable(keys) -> str:
    return QKeySequence(keys).toString(QKeySequence.PortableText)


def window_shortcuts(window) -> dict[str, str]:
    """The shortcuts `window` really has: portable keys -> the action's text (or "" for a QShortcut)."""
    found: dict[str, str] = {}
    for action in window.findChildren(QAction):
        for keys in action.shortcuts():
            if not keys.isEmpty():
                found[portable(keys)] = action.text().replace("&", "").rstrip("…")
    for shortcut in window.findChildren(QShortcut):
        if not shortcut.key().isEmpty():
            found.setdefault(portable(shortcut.key()), "")
    return found


def _table(rows: list[tuple[str, str]]) -> QTableWidget:
    table = QTableWidget(len(rows), 2)
    table.setHorizontalHeaderLabels(["Keys", "What it does"])
    table.verticalHeader().hide()
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.NoSelection)
    table.setWordWrap(True)
    for row, (keys, what) in enumerate(rows):
        table.setItem(row, 0, QTableWidgetItem(QKeySequence(keys).toString(QKeySequence.NativeText)))
        table.setItem(row, 1, QTableWidgetItem(what))
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
    table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
    table.resizeRowsToContents()
    rows_height = sum(table.rowHeight(r) for r in range(len(rows)))
    table.setFixedHeight(table.horizontalHeader().sizeHint().height() + rows_height + 2 * table.frameWidth())
    return table


def show_shortcuts(parent) -> QDialog:
    """F1: the window's shortcuts, then the keys of lists and fields. A shortcut the window gained that
    this sheet does not describe yet is listed too, by its menu text, rather than left out."""
    known = {portable(keys) for keys, _ in SHORTCUTS}
    extra = [(keys, text or "(no description)") for keys, text in sorted(window_shortcuts(parent).items())
             if keys not in known]
    dialog = QDialog(parent, windowTitle="Keyboard shortcuts")
    dialog.shortcut_table = _table(SHORTCUTS + extra)
    dialog.field_table = _table(FIELD_KEYS)
    buttons = QDialogButtonBox(QDialogButtonBox.Close, rejected=dialog.close)
    layout = QVBoxLayout(dialog)
    layout.addWidget(QLabel("<b>Window</b>"))
    layout.addWidget(dialog.shortcut_table)
    layout.addWidget(QLabel("<b>In lists and fields</b>"))
    layout.addWidget(dialog.field_table)
    layout.addStretch(1)
    layout.addWidget(buttons)
    dialog.resize(440, dialog.sizeHint().height())
    dialog.setModal(False)
    dialog.show()
    return dialog


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def glassbox_version() -> str:
    """The installed package's version, or pyproject.toml's when running from a source checkout."""
    version = _installed("glassbox")
    if version:
        return version
    try:
        data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
        return str(data["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def versions() -> list[tuple[str, str]]:
    """(component, version). torch's comes from its package metadata: About never imports torch."""
    return [("Glassbox", glassbox_version()), ("torch", _installed("torch") or "not installed"),
            ("Qt", qVersion()), ("PySide6", pyside_version), ("Python", platform.python_version())]


def model_lines(facts: ModelFacts | None) -> list[tuple[str, str]]:
    if facts is None:
        return [("Model", "none loaded")]
    return [("Model", facts.name),
            ("Architecture", f"{facts.architecture}, {facts.parameters / 1e6:.1f} M parameters"),
            ("Weights", facts.weights or facts.dtype), ("Device", f"{facts.device} ({facts.dtype})"),
            ("File", facts.path)]


def about_html(facts: ModelFacts | None) -> str:
    rows = "".join(f"<tr><td><b>{html.escape(name)}</b>&nbsp;&nbsp;</td><td>{html.escape(value)}</td></tr>"
                   for name, value in versions() + model_lines(facts))
    return ("<h3>Glassbox</h3><p>An LLM playground that shows what happens inside a real model while you "
            f"chat.</p><table>{rows}</table>")


def show_about(parent, facts: ModelFacts | None) -> QDialog:
    dialog = QDialog(parent, windowTitle="About Glassbox")
    dialog.text = QLabel(about_html(facts), wordWrap=True)
    dialog.text.setTextInteractionFlags(Qt.TextSelectableByMouse)  # versions are for pasting into a bug report
    buttons = QDialogButtonBox(QDialogButtonBox.Close, rejected=dialog.close)
    layout = QVBoxLayout(dialog)
    layout.addWidget(dialog.text)
    layout.addWidget(buttons)
    dialog.setModal(False)
    dialog.show()
    return dialog
