"""Where the panels sit and how big the window is: the docks (Model and Sampler tabbed on the left, the
inspection panels tabbed on the right), each panel inside a scroll area, the default dock widths, the
first start's size (it fits the available screen), and View → Reset layout.

Why scroll areas: a dock's minimum size is its panel's, and QMainWindow adds them up. Stacked panels made
the window's minimum 1535×1304, so on a laptop Send, Stop and the status line were off-screen. Inside a
scroll area a panel keeps its own minimum (it scrolls instead of squashing) while the window's stays small:
every panel is reachable at 1280×720, and a panel whose content grows can never widen the window."""
from __future__ import annotations

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QDockWidget, QFrame, QMainWindow, QScrollArea, QTabBar, QTabWidget, QVBoxLayout,
                               QWidget)

LEFT, RIGHT = Qt.LeftDockWidgetArea, Qt.RightDockWidgetArea
# The default arrangement: each area's docks are tabbed together, the first one shown.
# Left: the model, how it is loaded and run, what it costs (what the user sets); right: what it did with the
# selected token. Five short tab titles a side fit a 1366-wide laptop's docks whole (tests/app/test_window_layout.py).
DEFAULT_AREAS = {"Model": LEFT, "Sampler": LEFT, "RoPE": LEFT, "Memory": LEFT, "Quant drift": LEFT,
                 "Probabilities": RIGHT, "Logit lens": RIGHT, "What-if": RIGHT, "Attention": RIGHT,
                 "Routing": RIGHT, "LoRA": RIGHT}
FIRST_TAB = {LEFT: "Sampler", RIGHT: "Probabilities"}
# Docks that start closed and open when first used (File → Add LoRA adapter… opens LoRA): a panel for something
# not loaded would only take room. Opened, its tab still fits whole beside the others at 1366 px (a test holds it).
HIDDEN_AT_START = {"LoRA"}
SCREEN_SHARE = 0.9  # the first start's window: this share of the available screen in each direction
SMALL_SCREEN_WIDTH = 1600  # ... unless the screen is narrower than this: then all of it
# Default dock widths as a share of the window's width, within (least, most) pixels.
DOCK_WIDTH = {LEFT: (0.27, 320, 420), RIGHT: (0.34, 340, 560)}
# The dock arrangement's version in saveState: a state saved by an older arrangement (the stacked docks
# that did not fit a laptop) is not restored; the window starts with the default one instead.
LAYOUT_VERSION = 3  # 3: the issue-19 panels and short tab titles


class Holder(QWidget):
    """Holds one panel, with no layout of its own. A scroll area gives a widget whose layout has
    height-for-width (any word-wrapped label) its *preferred* height as a minimum, so a panel that fits
    would scroll; through this holder the minimum is the panel's least height at the width it has."""

    def __init__(self, panel: QWidget):
        super().__init__()
        self.panel = panel
        panel.setParent(self)

    def minimumSizeHint(self) -> QSize:
        hint = self.panel.minimumSizeHint()
        layout = self.panel.layout()
        if layout is not None and layout.hasHeightForWidth():  # wrapped labels take more lines when narrow
            hint.setHeight(max(hint.height(), layout.minimumHeightForWidth(max(self.width(), hint.width()))))
        return hint

    def sizeHint(self) -> QSize:
        return self.panel.sizeHint()

    def resizeEvent(self, event) -> None:
        self.panel.setGeometry(self.rect())
        if event.size().width() != event.oldSize().width():
            self.updateGeometry()  # the least height depends on the width

    def event(self, event) -> bool:
        if event.type() == QEvent.LayoutRequest:  # the panel's size hints changed: tell the scroll area
            self.updateGeometry()
        return super().event(event)


class Stacked(QWidget):
    """Panels one under the other in one dock (the Model panel and the chat format). Its least height is
    the panels' preferred heights added up, so the dock's scroll area scrolls to the last of them: with the
    layout's own least height the model facts were squeezed into overlapping rows and the overflow policy
    sat below the scrollable range at 1366×768 (review of issue 20)."""

    def __init__(self, *panels: QWidget):
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        for panel in panels:
            column.addWidget(panel)
        self.panels = panels

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        width = max(p.minimumSizeHint().width() for p in self.panels)
        spacing = self.layout().spacing() * (len(self.panels) - 1)
        height = sum(p.heightForWidth(self.width()) if p.hasHeightForWidth() and self.width() > 0
                     else p.sizeHint().height() for p in self.panels)
        return QSize(width, height + spacing)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 (Qt's name)
        return False  # the Holder takes minimumSizeHint, which already holds the panels' whole heights


def scrolled(panel: QWidget) -> QScrollArea:
    """The panel in a frameless scroll area that resizes it to fit, scrolling only below its minimum."""
    area = QScrollArea()
    area.setWidget(Holder(panel))
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    return area


def make_docks(window: QMainWindow, panels: dict[str, QWidget]) -> dict[str, QDockWidget]:
    """One dock per panel, named as in DEFAULT_AREAS, arranged as by default."""
    window.setDockOptions(QMainWindow.AnimatedDocks | QMainWindow.AllowTabbedDocks | QMainWindow.AllowNestedDocks)
    window.setTabPosition(Qt.AllDockWidgetAreas, QTabWidget.North)  # tabs on top read as tabs
    docks = {}
    for name, panel in panels.items():
        dock = QDockWidget(name, window)
        dock.setObjectName(name)  # lets saveState/restoreState find it again
        dock.setWidget(scrolled(panel))
        docks[name] = dock
        window.addDockWidget(DEFAULT_AREAS[name], dock)
    arrange(window, docks)
    return docks


def arrange(window: QMainWindow, docks: dict[str, QDockWidget]) -> None:
    """The default arrangement, from whatever the user made of it: every dock back in its area, docked,
    shown, tabbed with its area's others, at the default widths."""
    for name, dock in docks.items():
        dock.setFloating(False)
        window.removeDockWidget(dock)  # (it hides the dock)
    for area in (LEFT, RIGHT):
        names = [name for name, a in DEFAULT_AREAS.items() if a == area and name in docks]
        for name in names:
            window.addDockWidget(area, docks[name])
            docks[name].setVisible(name not in HIDDEN_AT_START)
        for before, after in zip(names, names[1:]):
            window.tabifyDockWidget(docks[before], docks[after])
        if FIRST_TAB[area] in docks:
            docks[FIRST_TAB[area]].raise_()
    whole_tab_titles(window)
    size_docks(window, docks)


def open_dock(window: QMainWindow, name: str) -> None:
    """Show a dock that started closed (HIDDEN_AT_START) as a tab of its area's others, in front. A dock shown
    by itself would be docked beside them instead, splitting the area."""
    dock = window.docks[name]
    if dock.isHidden() and not dock.isFloating():
        area = window.dockWidgetArea(dock)
        anchor = next((d for d in window.docks.values() if d is not dock and not d.isHidden() and not d.isFloating()
                       and window.dockWidgetArea(d) == area), None)
        if anchor is not None:
            window.tabifyDockWidget(anchor, dock)
        dock.show()
        whole_tab_titles(window)
    dock.raise_()


def whole_tab_titles(window: QMainWindow) -> None:
    """Tab titles are never elided ("Wh…" names nothing): on a screen too narrow for a side's tabs, the
    tab bar scrolls instead (QMainWindow makes its tab bars as docks are tabified)."""
    for bar in window.findChildren(QTabBar):
        bar.setElideMode(Qt.ElideNone)
        bar.setUsesScrollButtons(True)


def size_docks(window: QMainWindow, docks: dict[str, QDockWidget]) -> None:
    """Give the left and right docks their default widths for the window's present width."""
    chosen, widths = [], []
    for area, (share, least, most) in DOCK_WIDTH.items():
        dock = next((d for n, d in docks.items() if DEFAULT_AREAS[n] == area), None)
        if dock is not None:
            chosen.append(dock)
            widths.append(int(min(max(window.width() * share, least), most)))
    window.resizeDocks(chosen, widths, Qt.Horizontal)


def available_geometry(window: QWidget):
    screen = window.screen() or QGuiApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else None


def fit_first_start(window: QWidget) -> None:
    """No saved geometry: take SCREEN_SHARE of the available screen, centred on it."""
    area = available_geometry(window)
    if area is None:
        return
    # A laptop's screen is used whole: at 90% of 1366 px the side docks' tabs no longer fit beside the chat.
    share = 1.0 if area.width() < SMALL_SCREEN_WIDTH else SCREEN_SHARE
    width, height = int(area.width() * share), int(area.height() * share)
    window.resize(width, height)
    window.move(area.x() + (area.width() - width) // 2, area.y() + (area.height() - height) // 2)


def keep_on_screen(window: QWidget) -> None:
    """Shrink and move a window that is larger than the available screen (a size asked for by a caller,
    or saved on a bigger screen) so that all of it, the status line included, can be seen."""
    area = available_geometry(window)
    if area is None:
        return
    frame = window.frameGeometry()
    extra_w, extra_h = frame.width() - window.width(), frame.height() - window.height()  # title bar, borders
    width = min(window.width(), area.width() - extra_w)
    height = min(window.height(), area.height() - extra_h)
    if (width, height) != (window.width(), window.height()):
        window.resize(max(width, window.minimumSizeHint().width()), max(height, window.minimumSizeHint().height()))
    frame = window.frameGeometry()
    x = min(max(frame.x(), area.x()), area.right() + 1 - frame.width())
    y = min(max(frame.y(), area.y()), area.bottom() + 1 - frame.height())
    if (x, y) != (frame.x(), frame.y()):
        window.move(max(x, area.x()), max(y, area.y()))
