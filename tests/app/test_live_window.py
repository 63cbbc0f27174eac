"""The live window on light records: the default panels record no attention (generation stays on the
engine's fast path), attention is recomputed by replay only when the panel is on screen and equals the
explicit path's capture, the memory panel shows the loaded model (and only it, and no CUDA series on the
CPU), and a message too long for the context is taken back so the next one is answered."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from engine.engine import Engine
from engine.layers.attention import Attention
from engine.records import GenerationRequest, InstrumentOptions, LoadOptions, SamplingParams, StepRecord
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


@pytest.fixture
def counted(monkeypatch):
    """Engine.attention calls (replays) and explicit-path attention forwards, wherever they run."""
    calls = {"replays": 0, "explicit": 0}
    replay, explicit = Engine.attention, Attention._explicit

    def counting_replay(self, *args, **kwargs):
        calls["replays"] += 1
        return replay(self, *args, **kwargs)

    def counting_explicit(self, *args, **kwargs):
        calls["explicit"] += 1
        return explicit(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "attention", counting_replay)
    monkeypatch.setattr(Attention, "_explicit", counting_explicit)
    return calls


def show_attention(qtbot, window) -> None:
    window.show()
    window.docks["Attention"].show()
    window.docks["Attention"].raise_()  # its tab to the front
    qtbot.waitUntil(window.attention.isVisible, timeout=10_000)


def test_default_panels_record_no_attention_and_replay_nothing_while_hidden(qtbot, settings, hf_checkpoint,
                                                                             counted):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=6)
        window.attention.layer.setValue(1)  # a layer picked while the panel is hidden asks for nothing either
        chat(qtbot, window, "t5 t6", max_new_tokens=6)
        steps = window.controller.steps
        assert len(steps) >= 8 and all(not s.attention for s in steps)
        vocab = window.models.facts.vocab  # 128: every logit is stored
        assert all(len(s.logit_ids) == vocab and s.top_before for s in steps[-3:])  # the light records' parts
        assert counted == {"replays": 0, "explicit": 0}, "generation must run the fast path; no replay while hidden"
        assert window.worker.attention_views.replays == 0
        show_attention(qtbot, window)  # on screen: the panel asks, the worker replays one layer
        qtbot.waitUntil(lambda: window.attention.note.text().startswith("Layer 1"), timeout=TIMEOUT)
        assert counted["replays"] == 1 and window.attention.matrix().shape[0] >= 1
    finally:
        close_window(window)


def test_an_on_demand_view_equals_the_explicit_capture(qtbot, settings, hf_checkpoint):  # noqa: F811
    directory, _ = hf_checkpoint("llama", seed=2)
    window = open_window(qtbot, settings, directory)
    try:
        show_attention(qtbot, window)
        chat(qtbot, window, "t1 t2 t3 t4 t5 t6 t7", max_new_tokens=6)
        panel = window.attention
        qtbot.waitUntil(lambda: panel.note.text().startswith("Layer 0"), timeout=TIMEOUT)
        panel.layer.setValue(1)  # another layer: computed on request
        qtbot.waitUntil(lambda: panel.note.text().startswith("Layer 1"), timeout=TIMEOUT)
        ids, prompt_len = list(window.hub.inspector.ids), window.hub.inspector.prompt_len
        steps = len(ids) - prompt_len
        drawn = {}
        for index, choice in enumerate([("all",)] + [("head", h) for h in range(4)]):  # the mean, heads 0..3
            panel.choose(choice)
            drawn[index] = panel.matrix()
        assert drawn[0].shape == (steps, prompt_len - 1 + steps)  # a row per generated step
    finally:
        close_window(window)
    # The explicit path's capture, on a separate engine: each row's query as the last token of a prompt.
    engine = Engine.load(str(directory), LoadOptions(device="cpu"))
    for row, query in enumerate(range(prompt_len - 1, prompt_len - 1 + steps)):
        request = GenerationRequest(tuple(ids[:query + 1]), SamplingParams(temperature=0, max_new_tokens=1),
                                    instrument=InstrumentOptions(attention_layers=(1,)))
        record = next(r for r in engine.stream(request) if isinstance(r, StepRecord))
        captured = {a.head: np.array(a.weights) for a in record.attention if a.layer == 1}
        assert len(captured) == 4
        for head, weights in captured.items():
            assert np.allclose(drawn[head + 1][row, :query + 1], weights, atol=1e-5)
            assert np.isnan(drawn[head + 1][row, query + 1:]).all()  # later positions do not exist for it
        assert np.allclose(drawn[0][row, :query + 1], np.mean(list(captured.values()), axis=0), atol=1e-5)


def test_memory_panel_shows_the_loaded_model_before_a_token_and_only_it(qtbot, settings, hf_checkpoint):  # noqa: F811
    small, _ = hf_checkpoint("llama")
    large, _ = hf_checkpoint("llama", seed=1, hidden_size=128, intermediate_size=192)
    window = open_window(qtbot, settings, small)
    try:
        panel, facts = window.memory, window.models.facts
        weights = facts.weights  # in the model panel's words (one source for the figures)
        qtbot.waitUntil(lambda: weights in panel.weights_label.text(), timeout=10_000)  # before any token
        assert "0 of" in panel.headline.text() and panel.block_states().count("free") == len(panel.block_states())
        assert panel.curve_names() == ["process RSS"] and "CUDA" not in panel.figures.text()  # a CPU model
        chat(qtbot, window, "t1 t2 t3", max_new_tokens=4)
        with qtbot.waitSignal(window.worker.loaded, timeout=TIMEOUT):
            window.load_model(str(large), LoadOptions(device="cpu"))
        new = window.worker._facts.weights
        assert new != weights
        qtbot.waitUntil(lambda: new in panel.weights_label.text(), timeout=10_000)
        assert weights not in panel.weights_label.text() and len(panel.rss_curve()) == 1  # the old model is gone
    finally:
        close_window(window)


class DialogCloser:
    """Closes any modal box the window opens, noting its text (a failed turn must open none)."""

    def __init__(self):
        self.seen: list[str] = []
        self.timer = QTimer(interval=50, timeout=self.close)
        self.timer.start()

    def close(self) -> None:
        box = QApplication.activeModalWidget()
        if box is not None:
            self.seen.append(box.text())
            box.close()


@pytest.mark.parametrize("limit", ["context", "kv pool"])
def test_an_over_long_message_is_taken_back_and_the_next_one_is_answered(qtbot, settings, hf_checkpoint,  # noqa: F811
                                                                         limit):
    directory, _ = hf_checkpoint("llama")
    # 64 tokens of context; or 256 of context and a KV pool of 8 blocks of 16 tokens (the runner refuses)
    options = {"context_length": 64} if limit == "context" else {"kv_budget_gib": 8 * 16 * 512 / 2**30}
    window = open_window(qtbot, settings, directory, **options)
    closer = DialogCloser()
    try:
        long = " ".join(f"t{i % 120}" for i in range(200))
        window.sampler.set_params(SamplingParams(temperature=0, max_new_tokens=4))
        signal = window.worker.failed if limit == "context" else window.worker.finished
        with qtbot.waitSignal(signal, timeout=TIMEOUT):
            window.chat.input.setPlainText(long)
            window.chat.send_button.click()
        qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
        qtbot.wait(100)
        assert not closer.seen  # said once, inline in the chat: no modal box on top of it
        assert window.controller.messages == []  # not in the model's context
        assert window.chat.input.toPlainText() == long  # back in the input box, to edit
        transcript = window.chat.transcript_text()
        assert "Not sent" in transcript and long[:40] not in transcript
        if limit == "context":
            assert "does not fit" in transcript and "0 ms" not in window.models.perf.text()
        chat(qtbot, window, "t1 t2", max_new_tokens=4)
        assert [m["role"] for m in window.controller.messages] == ["user", "assistant"]
        assert window.controller.messages[0]["content"] == "t1 t2" and window.controller.steps
    finally:
        closer.timer.stop()
        close_window(window)
