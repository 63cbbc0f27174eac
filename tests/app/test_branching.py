"""The conversation as a branch tree in the real chat panel and controller, with a scripted worker that
answers each Turn with hand-made records (what the real worker sends): edits, regenerations and
"continue with this token" from a middle step of an older reply make branches; the worker receives that
reply's prompt ids + kept tokens + the chosen one; delete (undo), copy, n samples as siblings, and every
branch through save -> open and autosave -> restore."""
from __future__ import annotations

import json

import pytest
from PySide6.QtGui import QGuiApplication

from app.autosave import Autosave
from app.chat_controller import ChatController
from app.turn import TurnStart
from engine.records import PromptRecord, RequestDone, SamplingParams, SequenceResult, StepRecord
from widgets.chat import ChatPanel


class ScriptedWorker:
    def __init__(self):
        self.turns, self.request_id = [], 0

    def request_generate(self, turn):
        self.turns.append(turn)

    def request_cancel(self):
        pass


def prompt_of(turn) -> tuple[int, ...]:
    """A stand-in for the template: each message's length, then 0 (the generation prompt)."""
    if turn.messages:
        return tuple(len(m["content"]) for m in turn.messages) + (0,)
    return tuple(turn.prompt_ids) + tuple(turn.kept_ids)


def answer(controller, worker, texts: list[list[str]], token_base: int = 100) -> list[StepRecord]:
    """Answer the last Turn with one sequence per list of token texts (n samples when several)."""
    turn = worker.turns[-1]
    worker.request_id += 1
    rid, ids = worker.request_id, prompt_of(turn)
    kept = len(turn.kept_ids)
    controller.on_turn_started(TurnStart(PromptRecord(rid, ids, tuple(f"<{i}>" for i in ids)), kept,
                                         "".join(f"<{i}>" for i in turn.kept_ids)))
    records = [StepRecord(rid, i, token_base + 10 * seq + i, text, 0.5 + 0.05 * i, seq_index=seq)
               for seq, seq_texts in enumerate(texts) for i, text in enumerate(seq_texts)]
    controller.on_steps(records)
    results = tuple(SequenceResult(seq, "".join(seq_texts), tuple(r.token_id for r in records if r.seq_index == seq),
                                   "eos", -1.0) for seq, seq_texts in enumerate(texts))
    controller.on_finished(RequestDone(rid, results, len(ids), 0, 1.0, 1.0))
    return records


@pytest.fixture
def chat(qtbot):
    panel = ChatPanel()
    qtbot.addWidget(panel)
    worker = ScriptedWorker()
    controller = ChatController(panel, worker, lambda: SamplingParams(temperature=0))
    return panel, controller, worker


def send(panel, controller, worker, text, reply):
    panel.input.setPlainText(text)
    panel.send_button.click()
    return answer(controller, worker, [reply])


def test_an_edit_makes_a_branch_and_both_survive_save_open_and_autosave_restore(chat, qtbot, tmp_path):
    panel, controller, worker = chat
    send(panel, controller, worker, "Hello", ["Hi", " there"])
    send(panel, controller, worker, "Tell me a joke", ["No", "."])
    first_question = controller.tree.path()[2].id
    panel.begin_edit(first_question, "Tell me a story")  # what the edit link does
    assert not panel.edit_banner.isHidden() and panel.input.toPlainText() == "Tell me a story"
    with qtbot.waitSignal(panel.edit_submitted):
        panel.send_button.click()
    assert worker.turns[-1].messages[-1] == {"role": "user", "content": "Tell me a story"}
    answer(controller, worker, [["Once", " upon"]])
    edited = [m["content"] for m in controller.messages]
    assert edited == ["Hello", "Hi there", "Tell me a story", "Once upon"]
    assert "2/2" in panel.transcript_text()  # the navigator on the edited message
    controller.navigate(controller.tree.path()[2].id, -1)
    original = [m["content"] for m in controller.messages]
    assert original == ["Hello", "Hi there", "Tell me a joke", "No."] and "1/2" in panel.transcript_text()

    saved = tmp_path / "c.json"
    controller.title = "Jokes and stories"
    controller.save(saved)
    data = json.loads(saved.read_text())
    assert data["format"] == "glassbox-conversation/2" and data["title"] == "Jokes and stories"
    controller.clear()
    controller.open(saved)
    assert [m["content"] for m in controller.messages] == original and controller.title == "Jokes and stories"
    controller.navigate(controller.tree.path()[2].id, +1)
    assert [m["content"] for m in controller.messages] == edited

    autosave = Autosave(tmp_path / "data")  # what SessionAutosave writes, then a kill: never closed
    autosave.save(panel.system.text(), controller.messages, "and the", tree=controller.tree, title=controller.title)
    autosave.flush()
    snapshot, notices = Autosave(tmp_path / "data").take_unsaved()
    assert snapshot is not None and not notices and snapshot.title == "Jokes and stories"
    controller.clear()
    controller.open(snapshot.path, interrupted_reply=snapshot.partial)
    assert [m["content"] for m in controller.messages] == edited + ["and the"]  # the cut reply, kept
    controller.navigate(controller.tree.path()[2].id, -1)
    assert [m["content"] for m in controller.messages] == original


def test_continuing_from_a_middle_step_of_an_older_reply_branches_it(chat):
    panel, controller, worker = chat
    older = send(panel, controller, worker, "Q1", ["A", " b", " c", " d"])
    older_prompt = controller.turn_prompt_ids
    send(panel, controller, worker, "Q2", ["E", " f"])
    assert controller.turn_prompt_ids != older_prompt
    controller.continue_with(older[2], 777)  # the third token of the first (not the latest) reply
    turn = worker.turns[-1]
    assert not turn.messages and turn.prompt_ids == older_prompt and turn.kept_ids == (older[0].token_id,
                                                                                      older[1].token_id, 777)
    new = answer(controller, worker, [[" x", " y"]], token_base=300)
    assert [m["content"] for m in controller.messages] == ["Q1", "<100><101><777> x y"]
    reply = controller.tree.path()[-1]
    assert [t for t, _, _ in reply.tokens] == [older[0].token_id, older[1].token_id, 777] + [r.token_id for r in new]
    assert controller.steps == [older[0], older[1], *new]  # the kept records, then the new ones
    assert "2/2" in panel.transcript_text()
    controller.navigate(reply.id, -1)  # the old reply and what followed it are still there
    assert [m["content"] for m in controller.messages] == ["Q1", "A b c d", "Q2", "E f"]
    # a branch of the branch continues the same prompt ids
    controller.navigate(reply.id, +1)
    controller.continue_with(new[0], 888)
    assert worker.turns[-1].prompt_ids == older_prompt
    assert worker.turns[-1].kept_ids == (older[0].token_id, older[1].token_id, 777, 888)


def test_regenerate_any_reply_delete_with_undo_and_copy(chat):
    panel, controller, worker = chat
    send(panel, controller, worker, "Q1", ["**Bold**", " answer"])
    send(panel, controller, worker, "Q2", ["Second"])
    first_reply = controller.tree.path()[1]
    controller.regenerate(first_reply.id)
    assert [m["content"] for m in worker.turns[-1].messages] == ["Q1"]  # the reply's own context only
    answer(controller, worker, [["Other"]])
    assert [m["content"] for m in controller.messages] == ["Q1", "Other"]
    assert controller.tree.position(controller.tree.path()[1].id) == (2, 2)
    controller.navigate(controller.tree.path()[1].id, -1)
    assert [m["content"] for m in controller.messages] == ["Q1", "**Bold** answer", "Q2", "Second"]

    clipboard = QGuiApplication.clipboard()
    controller.copy(first_reply.id, markdown=True)
    assert clipboard.text() == "**Bold** answer"
    controller.copy(first_reply.id)
    assert clipboard.text() == "Bold answer"
    with_signal = []
    panel.copy_requested.connect(lambda key, md: with_signal.append((key, md)))
    panel._on_anchor(__import__("PySide6.QtCore", fromlist=["QUrl"]).QUrl(f"md:{first_reply.id}"))
    assert with_signal == [(first_reply.id, True)] and clipboard.text() == "**Bold** answer"

    question = controller.tree.path()[2].id
    controller.delete(question)  # the question and its reply
    assert [m["content"] for m in controller.messages] == ["Q1", "**Bold** answer"]
    assert "Undo" in panel.status.text()
    controller.undo_delete()
    assert [m["content"] for m in controller.messages] == ["Q1", "**Bold** answer", "Q2", "Second"]
    controller.delete(first_reply.id)  # a reply with a sibling: the sibling takes its place
    assert [m["content"] for m in controller.messages] == ["Q1", "Other"]


def test_n_samples_become_sibling_replies_shown_side_by_side(chat):
    panel, controller, worker = chat
    controller.turn_options = lambda: {"n": 3}
    panel.input.setPlainText("Name a colour")
    panel.send_button.click()
    assert worker.turns[-1].n == 3
    answer(controller, worker, [["Red"], ["Blue"], ["Green"]])
    reply = controller.tree.path()[-1]
    siblings = controller.tree.siblings(reply.id)
    assert [controller.tree.nodes[k].message["content"] for k in siblings] == ["Red", "Blue", "Green"]
    assert controller.messages[-1]["content"] == "Red" and "1/3" in panel.transcript_text()
    assert not panel.samples.isHidden() and len(panel.samples.views) == 3
    assert [v.toPlainText().strip() for v in panel.samples.views] == ["Red", "Blue", "Green"]
    controller.choose(siblings[2])
    assert controller.messages[-1]["content"] == "Green"
    # each sample keeps its own records: its tokens stay clickable
    selected = []
    controller.step_selected.connect(selected.append)
    panel.step_clicked.emit(0)
    assert selected[-1].seq_index == 2 and selected[-1].text == "Green"


def test_a_message_that_fails_before_its_first_token_goes_back_to_the_input(chat):
    panel, controller, worker = chat
    send(panel, controller, worker, "Q1", ["A"])
    panel.input.setPlainText("too long")
    panel.send_button.click()
    controller.on_failed("the message does not fit")
    assert [m["content"] for m in controller.messages] == ["Q1", "A"] and not controller.busy
    assert panel.input.toPlainText() == "too long"
    old = controller.tree.path()[1]
    controller.regenerate(old.id)
    controller.on_failed("broken")  # a failed regeneration keeps the reply there was
    assert [m["content"] for m in controller.messages] == ["Q1", "A"]
