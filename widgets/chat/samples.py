"""A reply's branches side by side (n samples, best-of, beams): one column each, rendered as Markdown, with
a button that makes that branch the conversation's. Plain text views: the tokens stay clickable in the
transcript, where the chosen branch is drawn."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QTextBrowser, QVBoxLayout, QWidget


class SamplesView(QFrame):
    chosen = Signal(int)  # the key of the branch picked

    def __init__(self, parent=None, **kwargs):
        super().__init__(parent, **kwargs)
        self.setFrameShape(QFrame.StyledPanel)
        self.columns = QHBoxLayout()
        self.title = QLabel("<b>Branches of this reply, side by side</b>")
        close = QPushButton("Close", flat=True, clicked=self.hide)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(close)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addLayout(self.columns)
        self.setMaximumHeight(220)
        self.views: list[QTextBrowser] = []

    def show_views(self, views) -> None:
        while self.columns.count():
            item = self.columns.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.views = []
        for view in views:
            column = QWidget()
            box = QVBoxLayout(column)
            box.setContentsMargins(0, 0, 0, 0)
            i, n = view.position
            count = f" · {view.token_count} tokens" if view.token_count is not None else ""
            pick = QPushButton(f"{i}/{n}{count}: use this", flat=True, toolTip="Continue the conversation with this reply")
            pick.clicked.connect(lambda _=False, key=view.key: self.chosen.emit(key))
            text = QTextBrowser()
            text.setMarkdown(view.text)
            box.addWidget(pick)
            box.addWidget(text, 1)
            self.columns.addWidget(column, 1)
            self.views.append(text)
        self.setVisible(bool(views))
