"""Conversation state: messages, the records of each generated step, and what happens on submit,
stop, regenerate, clear and failure. A failed or stopped turn never loses the conversation."""
from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from engine.records import RequestDone, StepRecord
from engine.text.tools import (BUILTIN_TOOLS, parse_tool_calls, run_builtin, template_supports_tools, tool_call_params,
                          tool_result_message)
from widgets.chat_panel import spec_marks

MAX_TOOL_ROUNDS = 3  # calls answered by built-in tools before the model must answer in prose


class ChatController(QObject):
    step_selected = Signal(object)  # the StepRecord the panels should show

    def __init__(self, chat_panel, worker, sampler_params):
        super().__init__()
        self.chat, self.worker, self.sampler_params = chat_panel, worker, sampler_params
        self.messages: list[dict] = []
        self.steps: list[StepRecord] = []  # every generated step of the conversation, in order
        self.busy = False
        self.turn_start = 0  # index in self.steps of the current reply's first step
        self.branch_prefix = ""  # text kept before a "continue with this token" branch
        self.tools: list = []  # engine.text.tools.Tool offered to the model (templates that read `tools` only)
        self.tool_choice = "auto"  # "auto": a call or prose; "required": the turn's first reply must be a call
        self.pending_call = None  # a call the user answers: their next message is its result
        self.tool_rounds = 0
        chat_panel.submitted.connect(self.submit)
        chat_panel.stop_requested.connect(self.stop)
        chat_panel.regenerate_requested.connect(self.regenerate)
        chat_panel.clear_requested.connect(self.clear)
        chat_panel.step_clicked.connect(self.select)

    def submit(self, text: str) -> None:
        if self.busy:
            return
        if self.pending_call is not None:  # the user supplies the result of the model's tool call
            self.messages.append(tool_result_message(self.pending_call, text))
            self.chat.add_user(f"[{self.pending_call.name} result] {text}")
            self.pending_call = None
        else:
            self.messages.append({"role": "user", "content": text})
            self.chat.add_user(text)
            self.tool_rounds = 0
        self._generate()

    def offer_tools(self, enabled: bool) -> None:
        """Offer the built-in tools (the calculator) to models whose chat template supports tools."""
        self.tools = list(BUILTIN_TOOLS.values()) if enabled else []
        self.pending_call = None

    def _generate(self) -> None:
        system = self.chat.system.text().strip()
        messages = ([{"role": "system", "content": system}] if system else []) + self.messages
        self.busy = True
        self.turn_start = len(self.steps)
        self.branch_prefix = ""
        self.chat.set_busy(True)
        self.chat.begin_assistant()
        engine = self.worker.engine
        if self.tools and engine is not None and template_supports_tools(engine.chat_template.source):
            # The template renders the tools; the grammar makes a call parse and fit the tools' schemas.
            ids = engine.chat_prompt_ids(messages, tools=[t.spec() for t in self.tools])
            required = self.tool_choice == "required" and self.tool_rounds == 0
            if self.tool_rounds >= MAX_TOOL_ROUNDS:
                self.worker.request_generate(ids, self.sampler_params())
            else:
                self.worker.request_generate(ids, tool_call_params(self.sampler_params(), self.tools, required,
                                                                   engine.tokenizer))
            return
        self.worker.request_generate(messages, self.sampler_params())

    def _answer_tool_calls(self, text: str) -> bool:
        """After a reply: run the calls it made (built-in tools at once, then continue; others wait for
        the user's result). True when the conversation continues by itself."""
        calls = parse_tool_calls(text, self.tools) if self.tools else []
        if not calls:
            return False
        self.messages[-1] = {"role": "assistant", "content": "",
                             "tool_calls": [c.message()["tool_calls"][0] for c in calls]}
        self.tool_rounds += 1
        for call in calls:
            result = run_builtin(call)
            if result is None:
                self.pending_call = call
                self.chat.add_assistant_text(f"[tool call] {call.name}({call.arguments}): type its result and Send")
                return False
            self.messages.append(tool_result_message(call, result))
            self.chat.add_assistant_text(f"[tool] {call.name}({call.arguments}) = {result}")
        self._generate()
        return True

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
            self.messages, self.steps, self.turn_start = [], [], 0
            self.pending_call, self.tool_rounds = None, 0
            self.chat.clear()

    def continue_with(self, step: StepRecord, token_id: int) -> None:
        """Branch the last reply at `step`: keep the tokens before it, put `token_id` in its place and
        let the model go on from there. The prompt's KV blocks are reused through the prefix cache."""
        turn = self.steps[self.turn_start:]
        position = next((i for i, s in enumerate(turn) if s is step), None)
        if self.busy or position is None:
            return  # only the latest reply can be branched: earlier ones have no prompt ids kept
        kept = turn[:position]
        ids = self.worker.last_prompt_ids + [s.token_id for s in kept] + [token_id]
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
            self.chat.drop_last_turn()
        self.steps = self.steps[:self.turn_start] + kept
        self.busy = True
        self.chat.set_busy(True)
        self.chat.begin_assistant()
        self.chat.append_tokens([(self.turn_start + i, s.text, s.prob) for i, s in enumerate(kept)])
        self.chat.append_tokens([(-1, self.worker.engine.tokenizer.token_text(token_id), 1.0)])
        self.branch_prefix = self.worker.engine.tokenizer.decode([s.token_id for s in kept] + [token_id])
        self.worker.request_generate(ids, self.sampler_params())

    def save(self, path, with_records: bool = False, model: str = "") -> None:
        from app import conversation_io

        conversation_io.save(path, self.chat.system.text(), self.messages, self.steps if with_records else (), model)

    def open(self, path) -> None:
        """Replace the conversation with a saved one (raises ValueError for a bad file, changing nothing)."""
        from app import conversation_io

        system, messages = conversation_io.load(path)
        if self.busy:
            raise ValueError("a reply is being generated: stop it first")
        self.messages, self.steps = messages, []
        self.chat.clear()
        self.chat.system.setText(system)
        for m in messages:
            if m["role"] == "user":
                self.chat.add_user(m["content"])
            elif m["role"] == "assistant":
                self.chat.add_assistant_text(m["content"])

    def select(self, global_index: int) -> None:
        if 0 <= global_index < len(self.steps):
            self.step_selected.emit(self.steps[global_index])

    # -- from the worker ----------------------------------------------------------------------
    def on_steps(self, records: list[StepRecord]) -> None:
        first = len(self.steps)
        self.steps.extend(records)
        self.chat.append_tokens([(first + i, r.text, r.prob, *spec_marks(r)) for i, r in enumerate(records)])

    def on_finished(self, done: RequestDone) -> None:
        self.busy = False
        self.chat.set_busy(False)
        if done.error:
            self.chat.end_assistant("stopped")
            self.chat.show_error(done.error)
            return
        result = done.results[0] if done.results else None
        text = result.text if result else ""
        reason = result.finish_reason if result else "cancelled"
        self.messages.append({"role": "assistant", "content": self.branch_prefix + text})  # stopped ones too
        self.chat.end_assistant({"eos": "", "length": "length limit", "cancelled": "stopped"}.get(reason, reason))
        if reason == "eos":
            self._answer_tool_calls(self.branch_prefix + text)

    def on_failed(self, message: str) -> None:
        self.busy = False
        self.chat.set_busy(False)
        self.chat.end_assistant("failed")
        self.chat.show_error(message)
