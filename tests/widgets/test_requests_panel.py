"""The Requests panel on synthetic records: rows as requests arrive, their token counts and status, the
selected request's tokens as links that say which step was clicked, and only the newest KEPT kept."""
from __future__ import annotations

from engine.records import PromptRecord, RequestDone, SequenceResult, StepRecord
from widgets import requests_panel
from widgets.requests_panel import RequestsPanel, prompt_preview


def prompt(rid: int, text: str = "Hello") -> PromptRecord:
    texts = ("<|im_start|>", "user", "\n", text, "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n")
    return PromptRecord(rid, tuple(range(len(texts))), texts)


def steps(rid: int, n: int, seq: int = 0) -> list[StepRecord]:
    return [StepRecord(rid, i, token_id=100 + i, text=f" w{i}", prob=0.5, seq_index=seq) for i in range(n)]


def done(rid: int, reason: str = "length", error: str | None = None) -> RequestDone:
    results = () if error else (SequenceResult(0, "", (), reason, 0.0),)
    return RequestDone(rid, results, 9, 0, 1.0, 1.0, error=error)


def test_rows_follow_requests_from_arrival_to_their_end(qtbot):
    panel = RequestsPanel()
    qtbot.addWidget(panel)
    panel.start(prompt(1, "first"), "/v1/chat/completions", at=0)
    panel.start(prompt(2, "second"), "/v1/completions", at=0)
    assert panel.request_ids() == [2, 1]  # newest first
    row = panel.list.topLevelItem(1)
    assert (row.text(1), row.text(3), row.text(4)) == ("chat/completions", "0", "streaming")
    assert "first" in row.text(2) and "<|im_start|>" not in row.text(2)
    panel.add_steps(steps(1, 3) + steps(2, 2) + steps(1, 2, seq=1))  # a second sample counts, is not shown
    assert row.text(3) == "5" and len(panel.request(1)[1]) == 3
    panel.finish(done(1))
    panel.finish(done(2, "cancelled"))
    assert (panel.status(1), panel.status(2)) == ("done", "cancelled")
    panel.start(prompt(3), "/v1/completions")
    panel.finish(done(3, error="the engine failed"))
    assert panel.status(3) == "error"


def test_selected_request_shows_its_tokens_and_says_which_was_clicked(qtbot):
    panel = RequestsPanel()
    qtbot.addWidget(panel)
    panel.start(prompt(7, "question"), "/v1/chat/completions")
    panel.add_steps(steps(7, 2))
    with qtbot.waitSignal(panel.request_selected) as selected:
        panel.select_request(7)
    assert selected.args == [7]
    assert "question" in panel.tokens.toPlainText() and " w1" in panel.tokens.toPlainText()
    panel.add_steps(steps(7, 4)[2:])  # streaming on: appended to the view
    assert panel.tokens.toPlainText().endswith(" w2 w3")
    with qtbot.waitSignal(panel.step_clicked) as clicked:
        panel.click_step(3)
    assert clicked.args[0].index == 3 and clicked.args[0].request_id == 7
    with qtbot.assertNotEmitted(panel.step_clicked):
        panel.click_step(4)  # no such token
    assert panel.request(7)[0].request_id == 7 and len(panel.request(7)[1]) == 4


def test_only_the_newest_requests_are_kept(qtbot, monkeypatch):
    monkeypatch.setattr(requests_panel, "KEPT", 3)
    panel = RequestsPanel()
    qtbot.addWidget(panel)
    for rid in range(5):
        panel.start(prompt(rid))
    assert panel.request_ids() == [4, 3, 2] and panel.request(0) is None


def test_preview_drops_markup_and_keeps_the_end():
    assert prompt_preview(("<s>", "<|user|>", " Hi", "\n\n", " there", "</s>")) == "Hi there"
    assert prompt_preview(("x" * 200,)).startswith("…") and len(prompt_preview(("x" * 200,))) == 81
