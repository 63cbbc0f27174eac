"""The Qt binding must not leak references to None.

PySide6 6.12.0 on Python 3.11 (where None is not immortal) drops one reference to None in each call
of a void Qt method: processEvents, QListWidget.clear, every pyqtgraph addItem/removeItem. A chat
redraws the panels per token, so None's count reaches zero within minutes and the interpreter
aborts ("Fatal Python error: none_dealloc"). Found through a screenshot run that aborted after one
MoE chat; pyproject.toml pins a release without the bug, and this test keeps it that way."""
import gc
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
from PySide6.QtWidgets import QApplication, QListWidget  # noqa: E402


def none_refs_per_call(fn, calls: int = 200) -> float:
    """Change in None's reference count per call. The collector is paused while counting: in a full
    test session it would otherwise free earlier tests' objects (and their references to None) in
    the middle, a few references in all, while the bug costs at least one per call."""
    fn()  # warm-up: first calls may create caches that hold None
    gc.collect()
    gc.disable()
    try:
        before = sys.getrefcount(None)
        for _ in range(calls):
            fn()
        return (sys.getrefcount(None) - before) / calls
    finally:
        gc.enable()


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

    # The bug costs exactly -1 per void call (-23 for an add+remove); -0.5 leaves room for a stray
    # reference dropped by another thread during the count.
    for name, fn in [("processEvents", app.processEvents), ("QListWidget.clear", items.clear),
                     ("PlotWidget addItem/removeItem", add_and_remove)]:
        assert none_refs_per_call(fn) > -0.5, f"{name} drops references to None"
