"""The on-demand panels in the real window (issue 19): the logit lens, the interventions' what-if,
quantization drift and RoPE are computed by the worker only while their panel is on screen, follow the
token selected in the chat, and show the engine's own numbers; an intervention not kept on never reaches
generation, one kept on does and the status line says so."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication

from engine.engine import Engine
from engine.records import Intervention, LoadOptions
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)

HEAVY = ("logit_lens", "intervene", "quant_drift")


@pytest.fixture
def calls(monkeypatch):
    """How often each on-demand Engine method ran (on the worker thread)."""
    counted = {name: 0 for name in (*HEAVY, "rope_view")}
    for name in counted:
        original = getattr(Engine, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            counted[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Engine, name, counting)
    return counted


def show(qtbot, window, name: str) -> None:
    window.show()
    window.docks[name].show()
    window.docks[name].raise_()  # its tab to the front
    panel = window.docks[name].widget().widget().panel  # dock -> scroll area -> holder -> panel
    qtbot.waitUntil(lambda: not panel.visibleRegion().isEmpty(), timeout=10_000)  # its tab in front


def select(window, index: int) -> None:
    """A click on the chat's token `index` (global step index)."""
    window.controller.select(index)


def test_hidden_panels_compute_nothing(qtbot, settings, hf_checkpoint, calls):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        window.show()  # every panel's dock is shown, but only the front tabs are on screen
        qtbot.waitExposed(window)
        window.docks["Probabilities"].raise_()
        window.docks["Sampler"].raise_()
        qtbot.waitUntil(lambda: window.attention.visibleRegion().isEmpty() and window.rope.visibleRegion().isEmpty())
        assert window.lens.isVisible() and window.attention.isVisible()  # Qt's word for a background tab
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=5)
        select(window, 2)
        qtbot.wait(200)
        assert all(calls[name] == 0 for name in HEAVY), calls
        assert window.worker.attention_views.replays == 0
        show(qtbot, window, "Logit lens")  # brought to the front: asked for now
        qtbot.waitUntil(lambda: calls["logit_lens"] == 1, timeout=TIMEOUT)
    finally:
        close_window(window)


def test_the_lens_follows_the_selected_token_and_ends_in_the_models_logits(qtbot, settings, hf_checkpoint,
                                                                           calls):  # noqa: F811
    directory, _ = hf_checkpoint("llama", seed=3)
    window = open_window(qtbot, settings, directory)
    try:
        show(qtbot, window, "Logit lens")
        chat(qtbot, window, "t1 t2 t3 t4 t5", max_new_tokens=6)
        qtbot.waitUntil(lambda: window.lens.view is not None, timeout=TIMEOUT)  # the reply's end: its last token
        steps = window.controller.steps
        assert window.lens.view.target_id == steps[-1].token_id
        select(window, 2)
        context = window.hub.contexts.before(steps[2])[0]  # the prompt and the two tokens before it
        qtbot.waitUntil(lambda: window.lens.view.target_id == steps[2].token_id
                        and window.lens.view.positions[-1] == len(context) - 1, timeout=TIMEOUT)
        view = window.lens.view
        # The last layer's row is the model's own next-token distribution at that step (greedy: the token).
        raw = {t.token_id: t.prob for t in steps[2].top_before}
        last = dict(zip(view.top_ids[-1, -1].tolist(), view.top_probs[-1, -1].tolist()))
        shared = set(raw) & set(last)
        assert shared and all(abs(raw[i] - last[i]) < 1e-4 for i in shared)
        assert view.top_ids[-1, -1, 0] == steps[2].token_id
    finally:
        close_window(window)


def test_an_intervention_not_kept_never_reaches_generation_and_one_kept_does(qtbot, settings, hf_checkpoint,
                                                                            calls):  # noqa: F811
    directory, _ = hf_checkpoint("llama", seed=4)
    window = open_window(qtbot, settings, directory)
    try:
        show(qtbot, window, "What-if")
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=6)
        plain = [s.token_id for s in window.controller.steps]
        off = (Intervention("mlp", 1, 0, 0.0), Intervention("head", 0, 1, 0.0))
        window.what_if.set_interventions(off)
        qtbot.waitUntil(lambda: window.what_if.view is not None, timeout=TIMEOUT)
        view = window.what_if.view
        assert view.interventions == off and view.target_id == window.controller.steps[-1].token_id
        assert not window.intervention_note.isVisible()
        window.controller.clear()
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=6)  # not kept: the what-if ended with the new turn
        assert [s.token_id for s in window.controller.steps] == plain
        assert window.what_if.interventions() == off  # still there for the what-if, never in generation
        window.what_if.keep.setChecked(True)
        assert window.intervention_note.isVisible() and "layer 1 MLP off" in window.intervention_note.text()
        window.controller.clear()
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=6)
        kept = [s.token_id for s in window.controller.steps]
        reference = Engine.load(directory, LoadOptions(device="cpu"))
        reference.set_interventions(off)
        prompt = window.hub.contexts.before(window.controller.steps[0])[0]
        expected = [t.token_id for t in reference.generate(list(prompt), window.sampler.params())
                    if hasattr(t, "token_id")]
        assert kept == expected[:len(kept)] and kept != plain  # the kept interventions changed the reply
        assert window.what_if.interventions() == off  # kept on: still there after the turn
        reply = window.controller.tree.leaf()
        assert "generated with interventions: layer 1 MLP off" in reply.note  # the chat says so
    finally:
        close_window(window)


def test_drift_equals_quant_diff_and_is_computed_only_when_asked(qtbot, settings, hf_checkpoint,
                                                                 calls):  # noqa: F811
    directory, _ = hf_checkpoint("llama", seed=5)
    window = open_window(qtbot, settings, directory, quant="int8")
    try:
        show(qtbot, window, "Quant drift")
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=6)
        assert calls["quant_drift"] == 0  # the float reference costs memory: only on request
        window.drift.compute_requested.emit()
        qtbot.waitUntil(lambda: window.drift.view is not None, timeout=TIMEOUT)
        ids = window.hub.contexts.latest()[0]
        engine = window.worker._engine  # a test's look: the worker is idle
        expected = engine.quant_diff(list(ids))
        assert np.allclose(window.drift.view.kl, expected.kl, atol=1e-6)
        assert window.drift.view.top1_agree == expected.top1_agree
        assert window.drift.view.reference_bytes > 0
        rss = len(window.memory.rss_curve())
        window.drift.release_requested.emit()  # freed: the memory panel shows the process after it
        qtbot.waitUntil(lambda: len(window.memory.rss_curve()) > rss, timeout=TIMEOUT)
    finally:
        close_window(window)


def test_rope_follows_the_model_panels_choice(qtbot, settings, hf_checkpoint, calls):  # noqa: F811
    directory, _ = hf_checkpoint("llama", seed=6)
    window = open_window(qtbot, settings, directory)
    try:
        show(qtbot, window, "RoPE")
        qtbot.waitUntil(lambda: window.rope.view is not None, timeout=TIMEOUT)
        assert window.rope.view.scaling == "default"
        window.model_panel.rope.setCurrentText("yarn")
        window.model_panel.rope_factor.setValue(4.0)
        qtbot.waitUntil(lambda: window.rope.view.scaling == "yarn" and window.rope.view.factor == 4.0,
                        timeout=TIMEOUT)
        assert "applies when a model is opened" in window.rope.preview.text() and not window.rope.preview.isHidden()
        reference = Engine.load(directory, LoadOptions(device="cpu", rope_scaling="yarn:4"))
        assert np.allclose(window.rope.view.inv_freq, reference.model.rope.inv_freq.tolist())
    finally:
        close_window(window)


def test_attention_follows_the_selected_token_even_outside_the_rows_on_screen(qtbot, settings, hf_checkpoint,
                                                                              monkeypatch):  # noqa: F811
    monkeypatch.setattr("app.inspector.MAX_QUERIES", 4)  # the first view holds the reply's last 4 rows only
    directory, _ = hf_checkpoint("llama", seed=7)
    window = open_window(qtbot, settings, directory)
    try:
        show(qtbot, window, "Attention")
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=10)
        panel, inspector = window.attention, window.hub.inspector
        qtbot.waitUntil(lambda: panel.matrix().size > 0, timeout=TIMEOUT)
        select(window, 1)  # step 1's query row: not among the last 4
        query = inspector.prompt_len - 1 + 1
        qtbot.waitUntil(lambda: panel._view is not None and panel._covers(query) and panel.selected_row() >= 0,
                        timeout=TIMEOUT)
        assert panel._view.query_start + panel.selected_row() == query
    finally:
        close_window(window)
