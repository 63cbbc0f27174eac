"""The Qt binding must not leak references to None.

PySide6 6.12.0 on Python 3.11 (where None is not immortal) drops one reference to None in each call
of a void Qt method: processEvents, QListWidget.clear, every pyqtgraph addItem/removeItem. A chat
redraws the panels per token, so None's count reaches zero within minutes and the interpreter
aborts ("Fatal Python error: none_dealloc"). Found through a screenshot run that aborted after one
MoE chat; pyproject.toml pins a release without the bug, and this test keeps it that way."""
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PySide6.QtWidgets import QApplication, QListWidget  # noqa: E402


def none_refs_per_call(fn, calls: int = 50) -> float:
    fn()  # warm-up: first calls may create caches that hold None
    before = sys.getrefcount(None)
    for _ in range(calls):
        fn()
    return (sys.getrefcount(None) - before) / calls


def test_void_qt_calls_keep_none_alive(qtbot):
    app = QApplication.instance()
    items = QListWidget()
    qtbot.addWidget(items)
    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    bar = pg.BarGraphItem(x=np.arange(8), height=np.ones(8), width=0.5)

    def add_and_remove():
        plot.addItem(bar)
        plot.removeItem(bar)

    # A leak is exactly -1 (or -23 for add+remove) per call; allow nothing below -0.1.
    for name, fn in [("processEvents", app.processEvents), ("QListWidget.clear", items.clear),
                     ("PlotWidget addItem/removeItem", add_and_remove)]:
        assert none_refs_per_call(fn) > -0.1, f"{name} drops references to None"
