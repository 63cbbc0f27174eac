"""The app's second built-in model: the panel's button asks for it, the worker resolves it to a
cached MoEfied folder, built once (atomically: a failed or cancelled build leaves nothing)."""
from __future__ import annotations

import json

import pytest

from app.engine_worker import BUILTIN_MOE_PATH
from engine.moefy.build import BUILTIN_MOE, ensure_builtin_moe
from widgets.model_panel import BUILTIN_MOE_PATH as PANEL_PATH
from widgets.model_panel import ModelPanel


def test_the_moe_button_requests_the_builtin_moe(qtbot):
    panel = ModelPanel()
    qtbot.addWidget(panel)
    assert PANEL_PATH == BUILTIN_MOE_PATH and panel.moe_button.text() == BUILTIN_MOE["label"]
    with qtbot.waitSignal(panel.open_requested) as blocker:
        panel.moe_button.click()
    assert blocker.args[0] == BUILTIN_MOE_PATH


def test_built_once_then_taken_from_the_cache(tmp_path):
    calls = []

    def fake_build(source, out, experts, top_k, progress=None):
        calls.append((source, experts, top_k))
        progress("collect", 1, 1)
        out.mkdir(parents=True)
        (out / "moefy.json").write_text(json.dumps({"experts": experts}))

    seen = []
    first = ensure_builtin_moe(tmp_path, lambda *a: seen.append(a), build_fn=fake_build)
    again = ensure_builtin_moe(tmp_path, build_fn=fake_build)
    assert first == again == tmp_path / BUILTIN_MOE["folder"] and (first / "moefy.json").is_file()
    assert calls == [(None, 8, 2)] and seen == [("collect", 1, 1)]


def test_a_cancelled_build_leaves_nothing(tmp_path):
    def cancelled(source, out, experts, top_k, progress=None):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("building the MoE model was cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        ensure_builtin_moe(tmp_path, build_fn=cancelled)
    assert list(tmp_path.iterdir()) == []
