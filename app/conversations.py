"""The conversations list (File → Conversations…, Ctrl+Shift+L): every conversation lives as a file in the
library (app/library.py). The one on screen is saved to its file after each reply and each edit, so the
list is always current; New saves it and starts an empty one; opening another saves this one first.
Deleting moves a file to the library's trash (nothing is lost by a slip). GUI thread.

Wiring only: the list is widgets/conversations_panel.py, the files app/library.py, the formats
app/conversation_io.py (through ChatController.save / open) and app/export.py."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox, QVBoxLayout

from app import export
from app.library import Library
from widgets.conversations_panel import ConversationsPanel


class Conversations(QObject):
    def __init__(self, window, controller, model_name, folder=None):
        super().__init__(window)  # the window only as Qt parent: a Python reference would make a cycle
        self.controller, self.model_name = controller, model_name
        self.library = Library(folder)
        self.current: Path | None = None  # the file of the conversation on screen (None until it has a message)
        self.panel = ConversationsPanel()
        self.dialog = QDialog(window, windowTitle="Conversations")
        layout = QVBoxLayout(self.dialog)
        layout.addWidget(self.panel)
        self.dialog.resize(420, 560)
        self.panel.open_requested.connect(self.open)
        self.panel.new_requested.connect(self.new)
        self.panel.rename_requested.connect(self.rename)
        self.panel.delete_requested.connect(self.delete)
        self.panel.export_requested.connect(self.export)

    def show(self) -> None:
        self.refresh()
        self.dialog.show()
        self.dialog.raise_()

    def refresh(self) -> None:
        self.panel.set_entries(self.library.entries())
        self.panel.set_current(str(self.current) if self.current else "")

    def save(self, *_) -> None:
        """The conversation on screen to its library file (created with its first message)."""
        if not self.controller.messages or self.controller.busy:
            return
        if self.current is None:
            self.current = self.library.new_path()
        self.controller.save(self.current, False, self.model_name())
        if self.dialog.isVisible():
            self.refresh()

    def new(self) -> None:
        if self.controller.busy:
            return
        self.save()
        self.controller.clear()
        self.current = None
        self.refresh()

    def open(self, path: str) -> None:
        if self.controller.busy or (self.current is not None and Path(path) == self.current):
            return
        self.save()
        try:
            self.controller.open(path)
        except ValueError as e:
            QMessageBox.warning(self.dialog, "Could not open the conversation", str(e))
            return
        self.current = Path(path)
        self.refresh()

    def rename(self, path: str, title: str) -> None:
        try:
            self.library.rename(path, title)
        except ValueError as e:
            QMessageBox.warning(self.dialog, "Could not rename the conversation", str(e))
        if self.current is not None and Path(path) == self.current:
            self.controller.title = title
        self.refresh()

    def delete(self, path: str) -> None:
        if self.current is not None and Path(path) == self.current:
            if self.controller.busy:
                return
            self.controller.clear()
            self.current = None
        self.library.delete(path)
        self.refresh()

    def export(self, path: str, kind: str) -> None:
        suffix, label = (".md", "Markdown (*.md)") if kind == "markdown" else (".json", "JSON (*.json)")
        destination, _ = QFileDialog.getSaveFileName(self.dialog, "Export conversation",
                                                     Path(path).stem + suffix, label)
        if not destination:
            return
        try:
            (export.write_markdown if kind == "markdown" else export.write_json)(path, destination)
        except ValueError as e:
            QMessageBox.warning(self.dialog, "Could not export the conversation", str(e))
