"""Look and feel in one place: the Fusion style, the palettes (placeholder text readable on both), the app
icon, pyqtgraph's defaults."""
from __future__ import annotations

from importlib.resources import files

from PySide6.QtGui import QColor, QIcon, QPalette


def _dark_palette() -> QPalette:
    p = QPalette()
    base, text, mid = QColor(37, 37, 38), QColor(220, 220, 220), QColor(53, 53, 55)
    for role, colour in [(QPalette.Window, mid), (QPalette.WindowText, text), (QPalette.Base, base),
                         (QPalette.AlternateBase, mid), (QPalette.Text, text), (QPalette.Button, mid),
                         (QPalette.ButtonText, text), (QPalette.ToolTipBase, base), (QPalette.ToolTipText, text),
                         (QPalette.Highlight, QColor(46, 134, 222)), (QPalette.HighlightedText, QColor(255, 255, 255)),
                         (QPalette.Link, QColor(120, 180, 255))]:
        p.setColor(role, colour)
    p.setColor(QPalette.Disabled, QPalette.Text, QColor(120, 120, 120))
    p.setColor(QPalette.Disabled, QPalette.ButtonText, QColor(120, 120, 120))
    p.setColor(QPalette.Disabled, QPalette.WindowText, QColor(120, 120, 120))
    return p


# Placeholder text ("Message — Ctrl+Enter to send, Esc to stop"): a QPalette() starts from the light
# defaults, whose near-black placeholder was all but invisible on the dark base. Both colours read at
# better than 4.5:1 against their theme's base (WCAG's contrast for body text), yet clearly greyer than text.
PLACEHOLDER = {False: QColor(112, 112, 112), True: QColor(160, 160, 160)}


def palette(app, dark: bool) -> QPalette:
    p = _dark_palette() if dark else app.style().standardPalette()
    for group in (QPalette.Active, QPalette.Inactive, QPalette.Disabled):
        p.setColor(group, QPalette.PlaceholderText, PLACEHOLDER[dark])
    return p


def apply_theme(app, dark: bool = False) -> None:
    """Light or dark; plots created afterwards pick up pyqtgraph's colours (existing ones keep theirs)."""
    import pyqtgraph as pg

    app.setStyle("Fusion")
    icon = files("resources").joinpath("icons/glassbox.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    app.setPalette(palette(app, dark))
    pg.setConfigOptions(antialias=True, background="#252526" if dark else "w", foreground="#dddddd" if dark else "k")
