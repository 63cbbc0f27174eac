"""Conversation state: messages, the records of each generated step, and what happens on submit,
stop, regenerate, clear, branch ("continue from this step with another token"), tool calls and
failure. A failed or stopped turn never loses the conversation; a message that failed before its first
token (too long for the context, ...) leaves it for the input box, so the next one is answered. Step
records are bounded by bytes: the oldest keep only their token (app/history.py).

GUI thread only, and it never touches the engine: it sends Turn requests to the worker
(app/engine_worker.py) and gets plain records back (TurnStart, StepRecord, ToolCall, RequestDone).
"""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.history import HistoryBudget, step_key
from app.turn import Turn, TurnStart
from engine.records import RequestDone, StepRecord
from widgets.chat_panel import spec_marks

MAX_TOOL_ROUNDS = 3  # calls answered by built-in tools before the model must answer in prose


def shown(index: int, record: StepRecord) -> tuple:
    """How the chat panel draws a step: (global step index, text, probability, speculative marks)."""
    return (index, record.text, record.prob, *spec_marks(record))


class ChatController(QObject):
    step_selected = Signal(object)  # the StepRecord the panels should show

    def __init__(self, chat_panel, worker, sampler_params):
        super().__init__()
        self.chat, self.worker, self.sampler_params = chat_panel, worker, sampler_params
        self.messages: list[dict] = []
        self.steps: list[StepRecord] = []  # every generated step of the conversation, in order
        self.history = HistoryBudget()  # bounds self.steps by bytes: the oldest lose their details
        self.unsent = None  # the turn's message until its first token: (messages before it, text, tool call)
        self.busy = False
        self.tools_offered = False  # the built-in tools (the calculator), for templates that take tools
        self.tool_choice = "auto"  # "auto": a call or prose; "required": the turn's first reply must be a call
        self.pending_call = None  # a ToolCall the user answers: their next message is its result
        self.tool_rounds = 0
        self._calls: tuple = ()  # the finishing reply's tool calls (the worker sends them just before it ends)
        self._new_reply()
        chat_panel.submitted.connect(self.submit)
        chat_panel.stop_requested.connect(self.stop)
        chat_panel.regenerate_requested.connect(self.regenerate)
        chat_panel.clear_requested.connect(self.clear)
        chat_panel.step_clicked.connect(self.select)

    def _new_reply(self) -> None:
        """The latest reply, as far as a branch needs it. Its tokens are `kept` (kept by earlier branches:
        (token id, how the chat shows it); a chosen token has no record and index -1), then the steps
        from `request_start` on, all continuing `turn_prompt_ids` (the PromptRecord's, kept here so a
        branch never asks the engine for them again)."""
        self.turn_start = self.request_start = len(self.steps)
        self.turn_prompt_ids: tuple[int, ...] = ()
        self.kept: list[tuple[int, tuple]] = []
        self.kept_text = ""  # those kept tokens as text (decoded by the worker)

    # -- user actions -------------------------------------------------------------------------
    def submit(self, text: str) -> None:
        if self.busy:
            return
        unsent = (len(self.messages), text, self.pending_call)
        if self.pending_call is not None:  # the user supplies the result of the model's tool call
            self.messages.append(self.pending_call.result_message(text))
            self.chat.add_user(f"[{self.pending_call.name} result] {text}")
            self.pending_call = None
        else:
            self.messages.append({"role": "user", "content": text})
            self.chat.add_user(text)
            self.tool_rounds = 0
        self._generate(unsent)

    def offer_tools(self, enabled: bool) -> None:
        """Offer the built-in tools (the calculator) to models whose chat template supports tools."""
        self.tools_offered = enabled
        self.pending_call = None

    def stop(self) -> None:
        if self.busy:
            self.worker.request_cancel()

    def regenerate(self) -> None:
        if self.busy or not self.messages:
            return
        if self.messages[-1]["role"] == "assistant":
            self.messages.pop()
            self.chat.drop_last_turn()
        self._generate()

    def clear(self) -> None:
        if not self.busy:
            self.messages, self.steps = [], self.history.reset()
            self.pending_call, self.tool_rounds = None, 0
            self._new_reply()
            self.chat.clear()

    def select(self, global_index: int) -> None:
        if 0 <= global_index < len(self.steps):
            self.chat.status.setText(self.history.note(global_index, self.steps[global_index]))
            self.step_selected.emit(self.steps[global_index])

    def continue_with(self, step: StepRecord, token_id: int) -> None:
        """Branch the latest reply at `step`: keep its tokens before it, put `token_id` in its place and let
        the model go on from there. The prompt's KV blocks are reused through the prefix cache."""
        reply = self.kept + [(s.token_id, shown(self.request_start + i, s))
                             for i, s in enumerate(self.steps[self.request_start:])]
        key = step_key(step)  # the records held may be copies of the one selected (app/history.py)
        position = next((i for i, (_, (index, *_)) in enumerate(reply)
                         if index >= 0 and step_key(self.steps[index]) == key), None)
        if self.busy or position is None or not self.turn_prompt_ids:
            return  # only the latest reply can be branched: earlier ones have no prompt ids kept
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
            self.chat.drop_last_turn()
        del self.steps[reply[position][1][0]:]  # this step and every later one
        self.history.truncated(self.steps)
        self.kept = reply[:position]
        kept_ids = tuple(token for token, _ in self.kept) + (token_id,)
        self._begin(Turn(self.sampler_params(), prompt_ids=self.turn_prompt_ids, kept_ids=kept_ids))
        self.chat.append_tokens([look for _, look in self.kept])

    def streaming_reply(self) -> str:
        """The reply streaming now, as far as it has come ("" when none streams): what autosave keeps."""
        if not self.busy:
            return ""
        return self.kept_text + "".join(s.text for s in self.steps[self.request_start:])

    # -- files --------------------------------------------------------------------------------
    def save(self, path, with_records: bool = False, model: str = "") -> None:
        from app import conversation_io

        conversation_io.save(path, self.chat.system.text(), self.messages, self.steps if with_records else (), model)

    def open(self, path, interrupted_reply: str = "") -> None:
        """Replace the conversation with a saved one (raises ValueError for a bad file, changing nothing).
        `interrupted_reply`: an autosaved reply cut short, kept like a stopped one (the model gets it too)."""
        from app import conversation_io

        system, messages = conversation_io.load(path)
        if self.busy:
            raise ValueError("a reply is being generated: stop it first")
        self.messages, self.steps = messages, self.history.reset()
        self._new_reply()
        self.chat.clear()
        self.chat.system.setText(system)
        for m in messages:  # user and assistant turns, tool calls and tool results alike
            self.chat.add_message(m)
        if interrupted_reply:  # kept like a stopped reply: the user sees (and the model gets) what was there
            self.messages.append({"role": "assistant", "content": interrupted_reply})
            self.chat.add_assistant_text(interrupted_reply + " … [interrupted]")

    # -- requests -----------------------------------------------------------------------------
    def _generate(self, unsent=None) -> None:
        system = self.chat.system.text().strip()
        messages = ([{"role": "system", "content": system}] if system else []) + self.messages
        self._new_reply()
        self._begin(Turn(self.sampler_params(), messages=tuple(messages), tools=self._tool_mode()), unsent)

    def _tool_mode(self) -> str:
        if not self.tools_offered:
            return "none"
        if self.tool_rounds >= MAX_TOOL_ROUNDS:
            return "offered"  # still rendered into the prompt, but the reply is no longer forced to call
        return "required" if self.tool_choice == "required" and self.tool_rounds == 0 else "auto"

    def _begin(self, turn: Turn, unsent=None) -> None:
        self.busy, self.unsent = True, unsent
        self.request_start = len(self.steps)
        self.kept_text = ""  # the worker sends it with the TurnStart
        self.chat.set_busy(True)
        self.chat.begin_assistant()
        self.worker.request_generate(turn)

    def _answer_tool_calls(self, calls) -> None:
        """After a reply that made calls: built-in tools are answered at once and the model goes on;
        a call of any other tool waits for the user's result."""
        self.messages[-1] = {"role": "assistant", "content": "", "tool_calls": [c.call for c in calls]}
        self.tool_rounds += 1
        for call in calls:
            if call.result is None:
                self.pending_call = call
                self.chat.add_assistant_text(f"[tool call] {call.name}({call.arguments}): type its result and Send")
                return
            self.messages.append(call.result_message(call.result))
            self.chat.add_assistant_text(f"[tool] {call.name}({call.arguments}) = {call.result}")
        self._generate()

    # -- from the worker (queued, GUI thread) -------------------------------------------------
    def on_turn_started(self, start: TurnStart) -> None:
        self.turn_prompt_ids = start.chat_prompt_ids
        self.kept_text = start.kept_text
        if start.kept:  # a branch: show the chosen token, which has no step record
            chosen = (start.prompt.token_ids[-1], (-1, start.prompt.token_texts[-1], 1.0))
            self.kept.append(chosen)
            self.chat.append_tokens([chosen[1]])

    def on_steps(self, records: list[StepRecord]) -> None:
        first = len(self.steps)
        self.steps.extend(records)
        self.history.added(self.steps)  # may replace older records by lighter copies
        self.chat.append_tokens([shown(first + i, r) for i, r in enumerate(records)])

    def on_tool_calls(self, calls) -> None:
        self._calls = tuple(calls)

    def on_finished(self, done: RequestDone) -> None:
        self.busy = False
        self.chat.set_busy(False)
        calls, self._calls = self._calls, ()
        if done.error:
            if not self._take_back(done.error):
                self.chat.end_assistant("stopped")
                self.chat.show_error(done.error)
            return
        result = done.results[0] if done.results else None
        reason = result.finish_reason if result else "cancelled"
        text = self.kept_text + (result.text if result else "")
        self.messages.append({"role": "assistant", "content": text})  # stopped ones too
        self.chat.end_assistant({"eos": "", "length": "length limit", "cancelled": "stopped"}.get(reason, reason))
        if calls:
            self._answer_tool_calls(calls)

    def on_failed(self, message: str) -> None:
        self.busy = False
        self.chat.set_busy(False)
        if not self._take_back(message):
            self.chat.end_assistant("failed")
            self.chat.show_error(message)

    def _take_back(self, message: str) -> bool:
        """A turn that failed before its first token: its message leaves the conversation (kept, it would
        fail every later turn too) for the input box. False: no new message, or an answer had begun."""
        if self.unsent is None or len(self.steps) > self.request_start or self.kept:
            return False
        at, text, call = self.unsent
        del self.messages[at:]
        self.pending_call, self.unsent = call, None
        self.chat.end_assistant()
        self.chat.drop_last_turn()  # the empty reply
        self.chat.drop_last_turn()  # and the message
        if not self.chat.input.toPlainText().strip():  # never over what the user typed meanwhile
            self.chat.input.setPlainText(text)
        self.chat.show_error(f"{message}. Not sent: the message is back in the input box, to shorten or clear.")
        return True
