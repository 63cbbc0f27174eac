"""Whether a panel is really on screen, and a signal when it comes on screen.

A dock tabbed behind another is still `isVisible()` (Qt keeps every tabified dock's widget shown and
only the current tab's is painted), so "visible" alone made panels on background tabs replay the
conversation for every click. What is on screen has a non-empty visible region; a tab brought to the
front says so through its dock's `visibilityChanged(True)`."""
from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QDockWidget, QWidget


def on_screen(widget: QWidget) -> bool:
    return widget.isVisible() and not widget.visibleRegion().isEmpty()


def when_shown(widget: QWidget, callback) -> None:
    """Call `callback()` when the dock holding `widget` comes to the front or is shown (after the event
    loop has laid it out, so that on_screen is true by then). A widget outside any dock: nothing."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    if parent is not None:
        parent.visibilityChanged.connect(lambda visible: visible and QTimer.singleShot(0, callback))
