"""Look and feel in one place: the Fusion style, the app icon, pyqtgraph's defaults."""
from __future__ import annotations

from importlib.resources import files

from PySide6.QtGui import QIcon


def apply_theme(app) -> None:
    import pyqtgraph as pg

    app.setStyle("Fusion")
    icon = files("resources").joinpath("icons/glassbox.svg")
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
