"""A window that fits a laptop (issue 18): minimum size at most 1280×720 with every dock open, Send, Stop
and the status line inside the window at that size, nothing that widens the window during use, a first
start that fits the screen, the dock layout remembered across a restart and View → Reset layout."""
from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtWidgets import QApplication, QScrollArea

from app.dock_layout import DEFAULT_AREAS, HIDDEN_AT_START
from app.main_window import MainWindow
from app.settings import Settings
from engine.records import ModelFacts

LAPTOP = (1280, 720)


def window_for(qtbot, tmp_path, name: str = "settings.ini") -> MainWindow:
    window = MainWindow(settings=Settings(path=str(tmp_path / name)), autoload=False, data_dir=tmp_path / "data",
                        offer_restore=False)
    qtbot.addWidget(window)
    return window


def inside(window, widget) -> bool:
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    return widget.isVisible() and window.rect().contains(rect)


def long_facts() -> ModelFacts:
    name = "A-model-with-a-very-long-name-that-goes-on-and-on-" * 3
    return ModelFacts(name=name, path="/x/" + name, architecture="llama", parameters=123_456_789_012, layers=2,
                      heads=4, kv_heads=2, head_dim=8, experts=0, experts_per_token=0, dense_layers=(), context=256,
                      vocab=100, dtype="float32", device="cpu", rope="yarn:4 (original 8192) " * 4,
                      weight_bytes=tuple((f"kind{i}", 10_000_000 * (i + 1)) for i in range(8)), supports_tools=False)


def test_minimum_size_fits_a_laptop_with_every_dock_open(qtbot, tmp_path):
    window = window_for(qtbot, tmp_path)
    window.show()
    qtbot.waitExposed(window)
    assert all(dock.toggleViewAction().isChecked() for name, dock in window.docks.items()
               if name not in HIDDEN_AT_START)
    for name in HIDDEN_AT_START:  # every dock open: those that open when first used too
        window.docks[name].show()
    for dock in window.docks.values():  # whichever tab is in front
        dock.raise_()
        QApplication.processEvents()
        hint, minimum = window.minimumSizeHint(), window.minimumSize()
        assert hint.width() <= LAPTOP[0] and hint.height() <= LAPTOP[1], (dock.objectName(), hint)
        assert minimum.width() <= LAPTOP[0] and minimum.height() <= LAPTOP[1]
    window.resize(*LAPTOP)
    QApplication.processEvents()
    assert (window.width(), window.height()) == LAPTOP
    for widget in (window.chat.send_button, window.chat.stop_button, window.chat.input, window.statusBar()):
        assert inside(window, widget), widget
    for dock in window.docks.values():  # every panel reachable: docked inside the window, in a scroll area
        assert not dock.isFloating() and isinstance(dock.widget(), QScrollArea)
        dock.raise_()
        QApplication.processEvents()
        assert inside(window, dock), dock.objectName()
    window.close()


def test_long_texts_never_make_the_window_wider(qtbot, tmp_path):
    window = window_for(qtbot, tmp_path)
    window.show()
    window.resize(*LAPTOP)
    qtbot.waitExposed(window)
    window.models.on_loaded(long_facts())  # the model panel's facts, the status line
    window.models.perf.setText("first token 123456 ms · prefill 99999 tok/s (123456 computed, 654321 cached) · "
                               "decode 12345.6 tok/s " * 3)
    window.statusBar().showMessage("a long message " * 40)
    window.probabilities.title.setText("Step 12345: chose “a-very-long-token-text” · entropy 3.21 nats " * 3)
    window.chat.status.setText("a long note " * 40)
    QApplication.processEvents()
    assert window.width() == LAPTOP[0] and window.minimumSizeHint().width() <= LAPTOP[0]
    assert inside(window, window.chat.send_button) and inside(window, window.statusBar())
    assert window.models.perf.toolTip().startswith("first token")  # elided on screen, whole in the tooltip
    window.close()


def test_the_first_start_fits_the_available_screen(qtbot, tmp_path):
    window = window_for(qtbot, tmp_path)
    window.show()
    qtbot.waitExposed(window)
    screen = window.screen().availableGeometry()
    assert screen.contains(window.frameGeometry())
    assert window.width() >= 0.8 * screen.width() or window.width() == window.minimumSizeHint().width()
    window.close()
    asked_too_big = window_for(qtbot, tmp_path, "other.ini")
    asked_too_big.resize(screen.width() + 600, screen.height() + 600)  # e.g. a caller's fixed size
    asked_too_big.show()
    qtbot.waitExposed(asked_too_big)
    assert screen.contains(asked_too_big.frameGeometry())
    asked_too_big.close()


def test_layout_is_remembered_and_reset_restores_the_default(qtbot, tmp_path):
    window = window_for(qtbot, tmp_path)
    window.show()
    qtbot.waitExposed(window)
    window.addDockWidget(Qt.LeftDockWidgetArea, window.docks["Attention"])  # the user moves one
    window.docks["Memory"].hide()  # and closes another
    window.close()  # saves geometry and layout
    again = window_for(qtbot, tmp_path)
    again.show()
    qtbot.waitExposed(again)
    assert again.dockWidgetArea(again.docks["Attention"]) == Qt.LeftDockWidgetArea
    assert not again.docks["Memory"].toggleViewAction().isChecked()
    again.docks["Sampler"].setFloating(True)
    reset = next(a for a in again.menuBar().actions() if a.text() == "&View").menu()
    next(a for a in reset.actions() if a.text() == "&Reset layout").trigger()
    QApplication.processEvents()
    for name, dock in again.docks.items():
        assert again.dockWidgetArea(dock) == DEFAULT_AREAS[name] and not dock.isFloating()
        assert dock.toggleViewAction().isChecked() == (name not in HIDDEN_AT_START)
    tabbed = {d.objectName() for d in again.tabifiedDockWidgets(again.docks["Probabilities"])}
    assert tabbed == {"Logit lens", "What-if", "Attention", "Routing"}
    assert {d.objectName() for d in again.tabifiedDockWidgets(again.docks["Model"])} == {"Sampler", "RoPE", "Memory",
                                                                                       "Quant drift"}
    again.close()


def test_a_layout_saved_by_the_old_arrangement_is_not_restored(qtbot, tmp_path):
    window = window_for(qtbot, tmp_path)
    window.docks["Memory"].hide()
    old = window.saveState(0)  # version 0: what the stacked docks' layout was saved as
    window.close()
    window.settings.q.setValue("window/state", old)
    window.settings.sync()
    again = window_for(qtbot, tmp_path)
    again.show()
    qtbot.waitExposed(again)
    assert again.docks["Memory"].toggleViewAction().isChecked()  # the default arrangement instead
    again.close()


def test_full_panels_fit_a_laptop_dock_without_scrolling(qtbot):
    """A right dock at 1366×768 is ~437×650, the left one ~365×650. Panels whose wrapped labels made them height-for-width took
    Qt's preferred height as their least (routing: ~1000 px for a 30-layer MoE; drift: ~1200 px), so the
    dock scrolled with the gate plot and the top-N lists off screen."""
    import numpy as np

    from app.dock_layout import scrolled
    from engine.records import QuantDriftView, RoutingRecord, StepRecord
    from widgets.drift_panel import QuantDriftPanel
    from widgets.routing_panel import RoutingPanel

    rng = np.random.default_rng(0)
    routing = RoutingPanel()
    routing.set_model_info(30, 8, 2)
    for i in range(40):
        records = tuple(RoutingRecord(layer, (1, 3), (0.6, 0.4), tuple(rng.dirichlet(np.ones(8)).tolist()))
                        for layer in range(1, 30))
        routing.add_step(StepRecord(request_id=1, index=i, token_id=i, text=f"t{i}", prob=0.5, routing=records))
    n = 300
    top = np.tile(np.arange(5), (n, 1))
    drift = QuantDriftPanel()
    drift.show_view(QuantDriftView(0, ("x",) * n, tuple(rng.random(n) * 0.01), (True,) * n, 0.005, 1.0, top,
                                   np.full((n, 5), 0.2, np.float32), top, np.full((n, 5), 0.2, np.float32),
                                   {i: f"t{i}" for i in range(5)}, "int4 66.4 MB + float32 0.1 MB", "float32",
                                   538_000_000))
    for panel, width in ((routing, 437), (drift, 360)):  # the right dock at 1366 is ~437 wide, the left ~365
        area = scrolled(panel)
        qtbot.addWidget(area)
        area.resize(width, 650)
        area.show()
        qtbot.waitExposed(area)
        assert area.widget().minimumSizeHint().height() <= 650, type(panel).__name__
        assert not area.verticalScrollBar().isVisible(), type(panel).__name__
        assert not area.horizontalScrollBar().isVisible(), type(panel).__name__


def test_every_tab_title_is_whole_on_a_1366_wide_laptop(qtbot, tmp_path):
    """The tabs' own widths against each side's default dock width at 1366 (the offscreen screen is
    smaller than a laptop's, so the window itself cannot be that wide here)."""
    from PySide6.QtWidgets import QTabBar

    from app.dock_layout import DOCK_WIDTH

    from app.dock_layout import open_dock

    window = window_for(qtbot, tmp_path)
    window.show()
    qtbot.waitExposed(window)
    for name in HIDDEN_AT_START:  # a dock that opens when first used must fit whole beside the others too
        open_dock(window, name)
    QApplication.processEvents()
    for area in set(DEFAULT_AREAS.values()):
        names = {n for n, a in DEFAULT_AREAS.items() if a == area}
        # QMainWindow keeps the tab bars of earlier arrangements around: the one holding this side's docks
        bar = next(b for b in window.findChildren(QTabBar) if {b.tabText(i) for i in range(b.count())} == names)
        assert bar.elideMode() == Qt.ElideNone and bar.usesScrollButtons()
        share, least, most = DOCK_WIDTH[area]
        width = min(max(1366 * share, least), most) - 8  # the dock's frame
        assert sum(bar.tabSizeHint(i).width() for i in range(bar.count())) <= width, names
    window.close()
