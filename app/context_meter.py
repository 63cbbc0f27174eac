"""The chat's context meter: how many tokens the conversation takes against the model's context, and what
the message being typed would add, counted by the worker with the same template and mode the next turn
will use (EngineWorker.request_count), so a message that would not fit is flagged before it is sent.
GUI thread.

Two counts: the conversation as it is ("used", asked again whenever it changes: a reply ended, an edit,
a branch switch, another template) and the conversation with the draft ("with draft", asked while typing,
after a pause). The worker answers only the latest request, so the kind of the latest one is kept here."""
from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

TYPING_PAUSE_MS = 400


class ContextMeter(QObject):
    def __init__(self, worker, controller, chat, template_panel, context, parent=None):
        super().__init__(parent)
        self.worker, self.controller, self.chat, self.template_panel = worker, controller, chat, template_panel
        self.options = template_panel.options  # () -> Turn's mode and template
        self.context = context  # () -> the model's context (0: no model)
        self.used = 0
        self.asked = ""  # the kind of the latest count: "used" or "draft"
        self.typing = QTimer(self, singleShot=True, interval=TYPING_PAUSE_MS, timeout=self.count_draft)
        chat.input.textChanged.connect(self.typing.start)
        worker.counted.connect(self.on_counted)  # a GUI-thread slot: delivered queued

    def messages(self, draft: str = "") -> tuple[dict, ...]:
        system = self.chat.system.text().strip()
        messages = ([{"role": "system", "content": system}] if system else []) + list(self.controller.messages)
        if draft:
            messages.append({"role": "user", "content": draft})
        return tuple(messages)

    def count_used(self, *_) -> None:
        """The conversation changed (a reply ended, an edit, another model or template): count it again."""
        if not self.context() or self.controller.busy:
            return
        self.asked = "used"
        self.worker.request_count(self.messages(), self.options())

    def count_draft(self) -> None:
        draft = self.chat.input.toPlainText().strip()
        if not self.context() or self.controller.busy:
            return
        if not draft:
            self.chat.set_context(self.used, self.context(), 0)
            return
        self.asked = "draft"
        self.worker.request_count(self.messages(draft), self.options())

    def on_counted(self, tokens: int) -> None:
        self.template_panel.show_problem("")  # the template rendered these messages
        if self.asked == "used":
            self.used = tokens
            self.chat.set_context(tokens, self.context(), 0)
            if self.chat.input.toPlainText().strip():
                self.count_draft()
        elif self.asked == "draft":
            self.chat.set_context(self.used, self.context(), max(0, tokens - self.used))
