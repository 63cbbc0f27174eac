"""The token selected in the chat, marked where it stands in the transcript. A click on a token re-aims every
panel ("Token 52 (the model chose “␣process”)"), and without a mark the reader had to find that token by eye.
The mark is an extra selection over the token's link (`step:N`), so the transcript's HTML stays as rendered;
it is found again by its link after each full re-render."""
from __future__ import annotations

from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor, QTextDocument
from PySide6.QtWidgets import QTextEdit

MARK_BACKGROUND, MARK_TEXT = "#1f618d", "#ffffff"  # dark blue under white text: unlike any probability colour


def step_cursor(document: QTextDocument, index: int) -> QTextCursor | None:
    """A cursor over the text of the link to step `index` (None: not in the document)."""
    href = f"step:{index}"
    block = document.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.isValid() and fragment.charFormat().anchorHref() == href:
                cursor = QTextCursor(document)
                cursor.setPosition(fragment.position())
                cursor.setPosition(fragment.position() + fragment.length(), QTextCursor.KeepAnchor)
                return cursor
            it += 1
        block = block.next()
    return None


def mark_step(transcript: QTextEdit, index: int | None) -> bool:
    """Mark step `index`'s token in `transcript` (None, or a step not shown: no mark). Whether it is marked."""
    cursor = step_cursor(transcript.document(), index) if index is not None else None
    if cursor is None:
        transcript.setExtraSelections([])
        return False
    selection = QTextEdit.ExtraSelection()
    selection.cursor = cursor
    mark = QTextCharFormat()
    mark.setBackground(QColor(MARK_BACKGROUND))
    mark.setForeground(QColor(MARK_TEXT))
    selection.format = mark
    transcript.setExtraSelections([selection])
    return True
