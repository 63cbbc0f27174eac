"""The conversation as a branch tree (app/conversation_tree.py) and what happens on submit, edit, delete,
copy, regenerate (any reply), the ‹ › navigator, "continue from this step with another token" (any step of
any reply: a new sibling continuing that reply's prompt ids + kept tokens + the chosen one, whose blocks the
prefix cache reuses), n / best-of / beam replies (each result a sibling), tool calls, stop and failure. A
failed or stopped turn never loses the conversation; a message that failed before its first token goes back
to the input box. Step records of every branch live in one list bounded by bytes (app/history.py).

GUI thread only, and it never touches the engine: it sends Turn requests to the worker
(app/engine_worker.py) and gets plain records back (TurnStart, StepRecord, ToolCall, RequestDone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QGuiApplication

from app.conversation_tree import ROOT, ConversationTree, Node
from app.history import HistoryBudget, step_key
from app.turn import Turn, TurnStart
from engine.records import RequestDone, StepRecord
from widgets.chat import MessageView, message_view, plain_text, spec_marks

MAX_TOOL_ROUNDS = 3  # calls answered by built-in tools before the model must answer in prose
ENDINGS = {"eos": "", "stop": "", "length": "length limit", "cancelled": "stopped",
           "context_full": "the context is full"}


def shown(index: int, record: StepRecord) -> tuple:
    """How the chat panel draws a step: (index in the shown steps, text, probability, speculative marks)."""
    return (index, record.text, record.prob, *spec_marks(record))


@dataclass
class LiveReply:
    """The reply streaming now: it answers `parent` (the active path ends there while it streams)."""

    parent: int
    restore_active: int  # the parent's active child before, if the turn fails before its first token
    kept: list = field(default_factory=list)  # (token id, text, prob) kept from the branched reply
    kept_records: list = field(default_factory=list)
    sequences: dict = field(default_factory=dict)  # seq_index -> indexes of its records in `records`
    shown_seq: int | None = None  # the sequence drawn while it streams (n > 1: the first one seen)
    prompt_ids: tuple = ()
    kept_text: str = ""
    keep: int = 1  # replies kept as branches: the samples asked for (n) or the beam width, best first
    changed_by: str = ""  # what made this reply unlike the model's own: interventions kept on, turns dropped
    unsent: tuple | None = None  # a new message until the first token: (its node id, text, tool call)


class ChatController(QObject):
    step_selected = Signal(object)  # the StepRecord the panels should show
    changed = Signal()  # edited, deleted, switched, renamed: what autosave and the library follow

    def __init__(self, chat_panel, worker, sampler_params, turn_options: Callable[[], dict] | None = None):
        super().__init__()
        self.chat, self.worker, self.sampler_params = chat_panel, worker, sampler_params
        self.turn_options = turn_options or (lambda: {})  # Turn's mode, template, overflow, n, best_of, beams
        self.tree = ConversationTree()
        self.records: list[StepRecord] = []  # every step of every branch, in arrival order
        self.history = HistoryBudget()  # bounds self.records by bytes: the oldest lose their details
        self.live: LiveReply | None = None
        self._shown: list[int] = []  # the records drawn in the chat, in order: a click's index -> records
        self._title = ""
        self.removed = None  # the last deletion, until undone or replaced
        self.tools_offered = False  # the built-in tools (the calculator), for templates that take tools
        self.tool_choice = "auto"  # "auto": a call or prose; "required": the turn's first reply must be a call
        self.pending_call = None  # a ToolCall the user answers: their next message is its result
        self.tool_rounds = 0
        self._calls: tuple = ()  # the finishing reply's tool calls (the worker sends them just before it ends)
        c = chat_panel
        c.submitted.connect(self.submit)
        c.stop_requested.connect(self.stop)
        c.regenerate_requested.connect(self.regenerate)
        c.clear_requested.connect(self.clear)
        c.step_clicked.connect(self.select)
        c.edit_submitted.connect(self.edit)
        c.delete_requested.connect(self.delete)
        c.copy_requested.connect(self.copy)
        c.regenerate_message.connect(self.regenerate)
        c.sibling_requested.connect(self.navigate)
        c.compare_requested.connect(self.compare)
        c.sample_chosen.connect(self.choose)
        c.undo_requested.connect(self.undo_delete)

    # -- state others read --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.live is not None

    @property
    def messages(self) -> list[dict]:
        """The active path's messages, OpenAI-shaped (a streaming reply is not among them yet)."""
        return self.tree.messages()

    @messages.setter
    def messages(self, value: list[dict]) -> None:
        """A conversation of one branch (its replies without tokens), replacing this one."""
        self.tree = ConversationTree.from_messages([dict(m) for m in value])
        self._show()

    @property
    def steps(self) -> list[StepRecord]:
        """The records of the tokens the chat shows (the active path's replies and the streaming one)."""
        return [self.records[i] for i in self._shown]

    @property
    def title(self) -> str:
        if self._title:
            return self._title
        first = next((m["content"] for m in self.messages if m["role"] == "user"), "")
        return " ".join(first.split())[:60]

    @title.setter
    def title(self, value: str) -> None:
        self._title = value.strip()
        self.changed.emit()

    def _last_reply(self) -> Node | None:
        return next((n for n in reversed(self.tree.path()) if n.role == "assistant"), None)

    @property
    def kept(self) -> list[tuple]:
        """The tokens the latest reply kept from the reply it branched: (token id, text, prob)."""
        if self.live is not None:
            return list(self.live.kept)
        node = self._last_reply()
        return list(node.tokens[:node.kept]) if node else []

    @property
    def turn_prompt_ids(self) -> tuple[int, ...]:
        """The prompt the latest reply continued (what a branch of it continues too)."""
        if self.live is not None and self.live.prompt_ids:
            return self.live.prompt_ids
        node = self._last_reply()
        return node.prompt_ids if node else ()

    # -- user actions -------------------------------------------------------------------------
    def submit(self, text: str) -> None:
        if self.busy:
            return
        parent = self.tree.leaf()
        restore, call = parent.active, self.pending_call
        if call is not None:  # the user supplies the result of the model's tool call
            node = self.tree.append(call.result_message(text))
            self.pending_call = None
        else:
            node = self.tree.append({"role": "user", "content": text})
            self.tool_rounds = 0
        self._generate(node.id, restore_active=restore, unsent=(node.id, text, call))

    def edit(self, key: int, text: str) -> None:
        """An edited message is a new branch beside the old one, answered anew."""
        if self.busy or key not in self.tree.nodes:
            return
        old = self.tree.nodes[key]
        parent = self.tree.nodes[old.parent]
        restore = parent.active
        node = self.tree.edit(key, text)
        self.tool_rounds = 0
        self.changed.emit()
        self._generate(node.id, restore_active=restore, unsent=(node.id, text, None))

    def regenerate(self, key: int | None = None) -> None:
        """A new reply beside reply `key` (default: the latest; a conversation ending with the user's
        message gets its reply)."""
        if self.busy:
            return
        if key is None or key is False:
            leaf = self.tree.leaf()
            if leaf.id == ROOT:
                return
            key = leaf.id if leaf.role == "assistant" else None
            parent = leaf.parent if key is not None else leaf.id
        elif key in self.tree.nodes and self.tree.nodes[key].role == "assistant":
            parent = self.tree.nodes[key].parent
        else:
            return
        self.tree.activate(key if key is not None else parent)
        self._generate(parent, restore_active=self.tree.nodes[parent].active)

    def delete(self, key: int) -> None:
        """Delete a message and the messages after it on every branch below it (Undo brings them back)."""
        if self.busy or key not in self.tree.nodes or key == ROOT:
            return
        self.removed = self.tree.remove(key)
        self._show()
        after = len(self.removed.nodes) - 1
        self.chat.show_undo(f"Deleted a message" + (f" and {after} after it" if after else "") + ".")
        self.changed.emit()

    def undo_delete(self) -> None:
        if self.removed is not None and not self.busy and self.removed.parent in self.tree.nodes:
            self.tree.restore(self.removed)
            self.removed = None
            self.chat.status.setText("")
            self._show()
            self.changed.emit()

    def copy(self, key: int, markdown: bool = False) -> str:
        """Message `key` onto the clipboard: as Markdown (as written) or as the text it reads as."""
        node = self.tree.nodes.get(key)
        if node is None:
            return ""
        view = self._view(node, [])
        text = view.text if markdown or node.role != "assistant" else plain_text(view.text)
        QGuiApplication.clipboard().setText(text)
        self.chat.status.setText("Copied as Markdown" if markdown else "Copied")
        return text

    def navigate(self, key: int, step: int) -> None:
        """The navigator: the sibling `step` places from message `key` becomes the conversation."""
        if not self.busy and key in self.tree.nodes:
            self.tree.switch(key, step)
            self._show()
            self.changed.emit()

    def choose(self, key: int) -> None:
        if not self.busy and key in self.tree.nodes:
            self.tree.activate(key)
            self._show()
            self.changed.emit()

    def compare(self, key: int) -> None:
        """Reply `key`'s branches side by side."""
        if key in self.tree.nodes:
            self.chat.show_samples([self._view(self.tree.nodes[k], []) for k in self.tree.siblings(key)])

    def offer_tools(self, enabled: bool) -> None:
        """Offer the built-in tools (the calculator) to models whose chat template supports tools."""
        self.tools_offered = enabled
        self.pending_call = None

    def stop(self) -> None:
        if self.busy:
            self.worker.request_cancel()

    def clear(self) -> None:
        if not self.busy:
            self.tree, self.records, self._shown = ConversationTree(), self.history.reset(), []
            self.pending_call, self.tool_rounds, self.removed, self._title = None, 0, None, ""
            self.chat.clear()

    def select(self, index: int) -> None:
        """Step `index` of those the chat shows (a click on its token)."""
        if 0 <= index < len(self._shown):
            at = self._shown[index]
            self.chat.status.setText(self.history.note(at, self.records[at]))
            self.step_selected.emit(self.records[at])

    def continue_with(self, step: StepRecord, token_id: int) -> None:
        """Branch the reply that holds `step` (any reply, any step): keep its tokens before it, put
        `token_id` in its place and let the model go on, as a new sibling of that reply. The reply's
        prompt ids are continued, so the prefix cache serves their KV blocks."""
        if self.busy:
            return
        found = self._find(step_key(step))
        if found is None or not found[0].prompt_ids:
            return  # a reply opened from a file without its prompt ids cannot be continued token by token
        node, position = found
        self.tree.activate(node.id)
        parent = self.tree.nodes[node.parent]
        live = self._start(parent.id, parent.active)
        live.kept, live.kept_records = list(node.tokens[:position]), list(node.records[:position])
        live.prompt_ids = node.prompt_ids
        kept_ids = tuple(t for t, _, _ in live.kept) + (token_id,)
        self._begin(Turn(self.sampler_params(), prompt_ids=node.prompt_ids, kept_ids=kept_ids,
                         **self._options()))
        self.chat.append_tokens(self._looks(live.kept, live.kept_records))

    def streaming_reply(self) -> str:
        """The reply streaming now, as far as it has come ("" when none streams): what autosave keeps."""
        if self.live is None:
            return ""
        seq = self.live.sequences.get(self.live.shown_seq, [])
        return self.live.kept_text + "".join(self.records[i].text for i in seq)

    # -- files --------------------------------------------------------------------------------
    def save(self, path, with_records: bool = False, model: str = "") -> None:
        from app import conversation_io

        conversation_io.save(path, self.chat.system.text(), self.messages, self.steps if with_records else (),
                             model, tree=self.tree, title=self.title)

    def open(self, path, interrupted_reply: str = "") -> None:
        """Replace the conversation with a saved one, every branch (raises ValueError for a bad file,
        changing nothing). `interrupted_reply`: an autosaved reply cut short, kept like a stopped one."""
        from app import conversation_io

        saved = conversation_io.read(path)
        if self.busy:
            raise ValueError("a reply is being generated: stop it first")
        self.clear()
        self.tree, self._title = saved.tree, saved.title
        self.chat.system.setText(saved.system)
        if interrupted_reply:  # kept like a stopped reply: the user sees (and the model gets) what was there
            self.tree.append({"role": "assistant", "content": interrupted_reply}, note="interrupted")
        self._show()

    # -- drawing ------------------------------------------------------------------------------
    def _show(self) -> None:
        """The active path, drawn whole (after a turn or a change of branch); the chat's step indexes
        are renumbered with it."""
        self._shown = []
        path = self.tree.path()
        views = [self._view(n, self._shown) for n in path]
        for view, count in zip(views, self._prompt_counts(path)):
            if count is not None:
                view.token_count = count
        self.chat.show_conversation(views)

    @staticmethod
    def _prompt_counts(path: list[Node]) -> list[int | None]:
        """Tokens each user (or tool) message adds to the prompt, template tokens included, from the prompts
        the replies were given: the prompt of the reply after it, less the previous reply's prompt and
        tokens (the first message's count holds the system prompt too). None where no reply tells."""
        counts: list[int | None] = [None] * len(path)
        before = 0  # prompt tokens up to the end of the previous reply
        for i, node in enumerate(path):
            if node.role == "assistant" and node.prompt_ids:
                if i > 0 and path[i - 1].role != "assistant":
                    counts[i - 1] = max(0, len(node.prompt_ids) - before)
                before = len(node.prompt_ids) + len(node.tokens)
        return counts

    def _view(self, node: Node, shown_list: list) -> MessageView:
        view = message_view(node.message) or MessageView(node.role, node.message.get("content") or "")
        if node.label:
            view.text = node.label
        view.key, view.position, view.note = node.id, self.tree.position(node.id), node.note
        if node.role == "assistant" and node.tokens and not node.message.get("tool_calls"):
            view.tokens = self._looks(node.tokens, node.records, shown_list)
            view.token_count = len(node.tokens)
        return view

    def _looks(self, tokens, records, shown_list=None) -> list[tuple]:
        """Tokens as the chat draws them; those with a record get the next index of the shown steps."""
        shown_list = self._shown if shown_list is None else shown_list
        out = []
        for (token, text, prob), at in zip(tokens, records):
            if at >= 0:
                out.append(shown(len(shown_list), self.records[at]))
                shown_list.append(at)
            else:
                out.append((-1, text, prob))
        return out

    def _find(self, key) -> tuple[Node, int] | None:
        """The reply holding the step with identity `key`, and the step's place in it (active path first)."""
        path = {n.id for n in self.tree.path()}
        for node in sorted(self.tree.nodes.values(), key=lambda n: n.id not in path):
            for position, at in enumerate(node.records):
                if at >= 0 and step_key(self.records[at]) == key:
                    return node, position
        return None

    # -- requests -----------------------------------------------------------------------------
    def _options(self) -> dict:
        return dict(self.turn_options() or {})

    def _start(self, parent: int, restore_active: int, unsent=None) -> LiveReply:
        self.live = LiveReply(parent, restore_active, unsent=unsent)
        self.tree.nodes[parent].active = -1  # the path ends at the parent while the reply streams
        self._show()
        return self.live

    def _generate(self, parent: int, restore_active: int = -1, unsent=None) -> None:
        self._start(parent, restore_active, unsent)
        system = self.chat.system.text().strip()
        messages = ([{"role": "system", "content": system}] if system else []) + self.messages
        self._begin(Turn(self.sampler_params(), messages=tuple(messages), tools=self._tool_mode(),
                         **self._options()))

    def _tool_mode(self) -> str:
        if not self.tools_offered:
            return "none"
        if self.tool_rounds >= MAX_TOOL_ROUNDS:
            return "offered"  # still rendered into the prompt, but the reply is no longer forced to call
        return "required" if self.tool_choice == "required" and self.tool_rounds == 0 else "auto"

    def _begin(self, turn: Turn) -> None:
        if self.live is not None:  # beam search reports every finished hypothesis; the user asked for `beams`
            self.live.keep = max(1, turn.beams or turn.n)
        self.chat.hide_samples()
        self.chat.set_busy(True)
        self.chat.begin_assistant()
        self.worker.request_generate(turn)

    def _answer_tool_calls(self, node: Node, calls) -> None:
        """After a reply that made calls: built-in tools are answered at once and the model goes on;
        a call of any other tool waits for the user's result."""
        node.message = {"role": "assistant", "content": "", "tool_calls": [c.call for c in calls]}
        self.tool_rounds += 1
        for call in calls:
            if call.result is None:
                self.pending_call = call
                node.note = f"{call.name}({call.arguments}): type its result and Send"
                self._show()
                return
            self.tree.append(call.result_message(call.result),
                             label=f"[tool] {call.name}({call.arguments}) = {call.result}")
        self._generate(self.tree.leaf().id)

    # -- from the worker (queued, GUI thread) -------------------------------------------------
    def on_turn_started(self, start: TurnStart) -> None:
        live = self.live or self._start(self.tree.leaf().id, -1)
        live.prompt_ids = start.chat_prompt_ids
        live.kept_text = start.kept_text
        marks = []
        # never silently: this reply is not the model as loaded (adapters said as such, not as "interventions")
        adapters = [name for name in start.interventions if name.startswith("LoRA ")]
        interventions = [name for name in start.interventions if name not in adapters]
        if interventions:
            marks.append("generated with interventions: " + ", ".join(interventions))
        if adapters:
            marks.append("generated with " + ", ".join(adapters))
        if start.dropped:
            marks.append(f"{start.dropped} oldest messages left out to fit the context")
        live.changed_by = " · ".join(marks)
        if start.kept:  # a branch: the chosen token, which has no step record
            chosen = (start.prompt.token_ids[-1], start.prompt.token_texts[-1], 1.0)
            live.kept.append(chosen)
            live.kept_records.append(-1)
            self.chat.append_tokens([(-1, chosen[1], 1.0)])

    def on_steps(self, records: list[StepRecord]) -> None:
        live = self.live or self._start(self.tree.leaf().id, -1)
        first = len(self.records)
        self.records.extend(records)
        self.history.added(self.records)  # may replace older records by lighter copies
        drawn = []
        for at in range(first, len(self.records)):
            seq = self.records[at].seq_index
            live.sequences.setdefault(seq, []).append(at)
            if live.shown_seq is None:
                live.shown_seq = seq
            if seq == live.shown_seq:
                drawn.append(shown(len(self._shown), self.records[at]))
                self._shown.append(at)
        if drawn:
            self.chat.append_tokens(drawn)

    def on_tool_calls(self, calls) -> None:
        self._calls = tuple(calls)

    def on_finished(self, done: RequestDone) -> None:
        live, self.live = self.live, None
        self.chat.set_busy(False)
        calls, self._calls = self._calls, ()
        if live is None:
            return
        if done.error:
            if not self._take_back(live, done.error):
                self._keep_parent(live)
                self.chat.end_assistant("stopped")
                self.chat.show_error(done.error)
            return
        nodes = [self._add_reply(live, result) for result in (done.results or (None,))[:live.keep]]
        self.tree.activate(nodes[0].id)  # the best first (best-of, beams), or the first sample
        self.chat.end_assistant(nodes[0].note)
        self._show()
        if len(nodes) > 1:
            self.compare(nodes[0].id)
        if calls:
            self._answer_tool_calls(nodes[0], calls)

    def _add_reply(self, live: LiveReply, result) -> Node:
        seq = result.index if result is not None else live.shown_seq
        at = live.sequences.get(seq, [])
        tokens = [(self.records[i].token_id, self.records[i].text, self.records[i].prob) for i in at]
        ids, final = tuple(t for t, _, _ in tokens), tuple(result.token_ids) if result is not None else ()
        if result is not None and ids[:len(final)] != final[:len(ids)]:
            at, tokens = [], []  # a beam whose records are another lineage's: its text only
        # (a result may leave out a step the records have, such as its end token: the records are kept)
        reason = result.finish_reason if result is not None else "cancelled"
        text = live.kept_text + (result.text if result is not None else "".join(t for _, t, _ in tokens))
        tokens = live.kept + tokens if tokens or not live.kept else []
        return self.tree.add(live.parent, {"role": "assistant", "content": text}, prompt_ids=live.prompt_ids,
                             tokens=tokens, records=(live.kept_records + at) if tokens else [],
                             kept=len(live.kept),
                             note=" · ".join(n for n in (ENDINGS.get(reason, reason), live.changed_by) if n))

    def on_failed(self, message: str) -> None:
        live, self.live = self.live, None
        self.chat.set_busy(False)
        if live is not None and not self._take_back(live, message):
            self._keep_parent(live)
            self.chat.end_assistant("failed")
            self.chat.show_error(message)

    def _keep_parent(self, live: LiveReply) -> None:
        parent = self.tree.nodes.get(live.parent)
        if parent is not None and parent.active < 0 and live.restore_active in parent.children:
            parent.active = live.restore_active

    def _take_back(self, live: LiveReply, message: str) -> bool:
        """A turn that failed before its first token: its new message leaves the conversation (kept, it
        would fail every later turn too) for the input box. False: no new message, or an answer had begun."""
        if live.unsent is None or live.sequences or live.kept:
            return False
        key, text, call = live.unsent
        node = self.tree.nodes[key]
        self.tree.remove(key)
        grand = self.tree.nodes[node.parent]
        if live.restore_active in grand.children:
            grand.active = live.restore_active
        self.pending_call = call
        self.chat.end_assistant()
        self._show()
        if not self.chat.input.toPlainText().strip():  # never over what the user typed meanwhile
            self.chat.input.setPlainText(text)
        self.chat.show_error(f"{message}. Not sent: the message is back in the input box, to shorten or clear.")
        return True
