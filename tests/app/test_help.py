"""Help: the shortcuts sheet against the shortcuts a real main window defines, and About against the
versions really installed."""
from __future__ import annotations

import platform
import tomllib
from pathlib import Path

import PySide6
import pytest
import torch
from PySide6.QtCore import QSettings, QStandardPaths, qVersion

from app.help import about_html, glassbox_version, portable, show_about, show_shortcuts, shortcuts, window_shortcuts
from app.main_window import MainWindow
from app.settings import Settings
from engine.records import ModelFacts

PENDING = {"F1"}  # on the sheet, wired into the window by the app (main_window) with the sheet itself


@pytest.fixture
def window(qtbot, tmp_path):
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path))
    QStandardPaths.setTestModeEnabled(True)
    w = MainWindow(settings=Settings("GlassboxTests", "help"), autoload=False, data_dir=tmp_path,
                   offer_restore=False)
    qtbot.addWidget(w)
    yield w
    w.close()  # stops the worker thread


def test_the_sheet_lists_every_shortcut_the_window_defines_and_no_other(window):
    real = set(window_shortcuts(window))
    assert {"Ctrl+Return", "Esc", "Ctrl+O", "Ctrl+S", "Ctrl+Q"} <= real  # what the issue names, found
    sheet = {portable(keys) for keys, _ in shortcuts()}
    assert real - sheet == set(), f"shortcuts the sheet does not describe: {real - sheet}"
    assert sheet - real <= PENDING, f"the sheet describes shortcuts the window lacks: {sheet - real - PENDING}"


def test_the_sheet_dialog_shows_each_shortcut_and_any_undescribed_one(window, qtbot):
    window.menuBar().addMenu("&Test").addAction("&Frobnicate…", lambda: None, "Ctrl+Shift+F")
    dialog = show_shortcuts(window)
    qtbot.addWidget(dialog)
    assert dialog.isVisible() and not dialog.isModal()
    table = dialog.shortcut_table
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert rows["Ctrl+S"] == "Save the conversation" and "Ctrl+Return" in rows and "F1" in rows
    assert rows["Ctrl+Shift+F"] == "Frobnicate"  # a new shortcut is never left off the sheet


def test_about_shows_the_real_versions_and_the_model(qtbot):
    facts = ModelFacts(name="SmolLM2-135M-Instruct", path="/m/smol.gguf", architecture="llama",
                       parameters=134_515_008, layers=30, heads=9, kv_heads=3, head_dim=64, experts=0,
                       experts_per_token=0, dense_layers=(), context=8192, vocab=49152, dtype="float32",
                       device="cpu", rope="default", weight_bytes=(("int4", 56_600_000), ("float32", 28_300_000)),
                       supports_tools=False)
    dialog = show_about(None, facts)
    qtbot.addWidget(dialog)
    text = dialog.text.text()
    for version in (glassbox_version(), torch.__version__, qVersion(), PySide6.__version__,
                    platform.python_version()):
        assert version in text
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert glassbox_version() == pyproject["project"]["version"]
    assert "SmolLM2-135M-Instruct" in text and "int4 56.6 MB + float32 28.3 MB" in text
    assert "none loaded" in about_html(None)
