"""LoRA adapters in the real window: File → Add LoRA adapter… loads one through the worker and opens its
dock; the selected token's comparison without and with it shows, follows a click, and is asked again when
the adapter is switched off, on, or rescaled; the status line says while one is on."""
from __future__ import annotations

import pytest

pytest.importorskip("peft")

from engine.engine import Engine  # noqa: E402
from engine.records import LoadOptions  # noqa: E402
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: E402, F401
from tests.engine.lora_fixtures import make_adapter  # noqa: E402


def add_from_menu(window, monkeypatch, folder) -> None:
    monkeypatch.setattr("widgets.adapter_panel.QFileDialog.getExistingDirectory", lambda *a, **k: str(folder))
    file_menu = next(a for a in window.menuBar().actions() if a.text() == "&File").menu()
    next(a for a in file_menu.actions() if a.text() == "Add LoRA &adapter…").trigger()


def test_add_toggle_and_compare_in_the_window(qtbot, settings, hf_checkpoint, tmp_path, monkeypatch):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    folder = make_adapter(tmp_path / "style")
    window = open_window(qtbot, settings, directory)
    panel = window.adapter_panel
    try:
        window.show()
        qtbot.waitExposed(window)
        window.docks["LoRA"].hide()  # as it starts (the tests' settings file may hold a layout with it open)
        add_from_menu(window, monkeypatch, folder)
        qtbot.waitUntil(lambda: panel.adapter_names() == ["style"], timeout=TIMEOUT)
        qtbot.waitUntil(lambda: not panel.visibleRegion().isEmpty(), timeout=10_000)  # its dock open, in front
        assert window.docks["LoRA"] in window.tabifiedDockWidgets(window.docks["Probabilities"])  # a tab, not a split
        assert window.adapters.note.isVisible() and window.adapters.note.text() == "LoRA: style ×1"
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=5)
        steps = window.controller.steps
        qtbot.waitUntil(lambda: panel.view is not None, timeout=TIMEOUT)  # the reply's end: its last token
        assert panel.view.target_id == steps[-1].token_id and panel.view.kl > 0
        assert panel.view.adapters == ("style ×1",)
        reference = Engine.load(directory, LoadOptions(device="cpu"))  # the reply is the adapted model's
        reference.add_adapter(folder)
        prompt = window.hub.contexts.before(steps[0])[0]
        expected = [t.token_id for t in reference.generate(list(prompt), window.sampler.params())
                    if hasattr(t, "token_id")]
        assert [s.token_id for s in steps] == expected[:len(steps)]
        note = window.controller.tree.leaf().note
        assert "generated with LoRA style ×1" in note and "interventions" not in note  # the chat says so
        window.controller.select(steps[1].index)  # a click on the second token
        context = window.hub.contexts.before(steps[1])[0]
        qtbot.waitUntil(lambda: panel.view is not None and panel.view.position == len(context), timeout=TIMEOUT)
        row = panel.row("style")
        row.enabled.setChecked(False)  # off: nothing to compare, the status line clears
        qtbot.waitUntil(lambda: not window.adapters.note.isVisible(), timeout=TIMEOUT)
        assert panel.view is None and "Switch an adapter on" in panel.message.text()
        row.scale.setValue(0.5)
        row.enabled.setChecked(True)
        qtbot.waitUntil(lambda: panel.view is not None and panel.view.adapters == ("style ×0.5",), timeout=TIMEOUT)
        assert panel.view.position == len(context)
        assert window.adapters.note.text() == "LoRA: style ×0.5"
        add_from_menu(window, monkeypatch, tmp_path / "nowhere")  # a bad folder: said in the panel, nothing lost
        qtbot.waitUntil(lambda: "Adapter not changed" in panel.message.text(), timeout=TIMEOUT)
        assert panel.adapter_names() == ["style"]
    finally:
        close_window(window)


def test_adapters_given_when_loading_show_in_the_panel(qtbot, settings, hf_checkpoint, tmp_path):  # noqa: F811
    """`glassbox --lora DIR:SCALE` loads with LoadOptions.adapters: the panel shows what the engine holds."""
    directory, _ = hf_checkpoint("llama")
    folder = make_adapter(tmp_path / "style")
    window = open_window(qtbot, settings, directory, adapters=((str(folder), 0.25),))
    try:
        qtbot.waitUntil(lambda: window.adapter_panel.adapter_names() == ["style"], timeout=TIMEOUT)
        assert window.adapter_panel.row("style").scale.value() == 0.25
        assert window.adapters.note.text() == "LoRA: style ×0.25"
    finally:
        close_window(window)
