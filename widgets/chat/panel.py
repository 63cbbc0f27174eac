"""The conversation: a transcript of messages (each with a header: role, token count, the ‹ i/n › navigator
and its actions), a reply streamed as probability-coloured tokens rendered as Markdown line by line, a
system prompt, an input box that also edits a message, the context meter and a side-by-side view of a
reply's branches. Emits what the user asks for; knows nothing about the engine, threads or the tree."""
from __future__ import annotations

import html
from contextlib import contextmanager

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QColor, QGuiApplication, QKeySequence, QShortcut, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar, QPushButton,
                               QSizePolicy, QTextBrowser, QVBoxLayout, QWidget)

from widgets.chat.markdown import code_blocks
from widgets.chat.transcript import (CURSOR_MARK, HEADER, SPEC_LEGEND, MessageView, block_css, block_style, call_text,
                                     header_html, message_html, reply_lines, spec_figures_text, split_lines)
from widgets.chat.samples import SamplesView
from widgets.chat.selection import mark_step

EDIT_BANNER = "Editing a message: Send makes a new branch (the old one stays, ‹ › switches back) · Esc cancels"
METER_MIN_PX, METER_PADDING_PX = 150, 16  # the context meter: its least width; room beside its text


class ChatPanel(QWidget):
    submitted = Signal(str)
    stop_requested = Signal()
    regenerate_requested = Signal()  # the Regenerate button: the latest reply
    clear_requested = Signal()
    step_clicked = Signal(int)
    edit_submitted = Signal(int, str)  # message key, its new text
    delete_requested = Signal(int)
    copy_requested = Signal(int, bool)  # message key, as Markdown
    regenerate_message = Signal(int)
    sibling_requested = Signal(int, int)  # message key, -1 / +1
    compare_requested = Signal(int)  # a reply's branches side by side
    sample_chosen = Signal(int)  # a reply picked in the side-by-side view
    undo_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._turns: list[MessageView] = []
        self._live: list[tuple] = []  # the reply being streamed: (index, text, prob, *marks) per token
        # The document ends with the live reply's lines and its cursor mark (▍): a tick re-renders only the
        # reply's last (unfinished) line and adds the new ones, in place, never the conversation (Qt lays a
        # whole paragraph out again for every insertion, so a 2,000-token reply in one paragraph took ~17 ms
        # a tick). The last line's Markdown may change as it grows ("#" becomes a heading), hence re-rendered.
        self._live_shown = False
        self._live_lines: list[list[tuple]] = [[]]
        self._live_states: list[tuple[bool, int]] = [(False, 0)]  # code-block state before each line
        self._live_block = 0  # where the last line's paragraph starts in the document
        self.editing = -1  # the key of the message the input box edits (-1: none)
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.system = QLineEdit(placeholderText="System prompt (optional)")
        self.transcript = QTextBrowser(openLinks=False)
        self.marked_step: int | None = None  # the token clicked last: marked in the transcript (selection.py)
        self._marked_token: tuple | None = None  # its (index, text, prob) when clicked
        self.transcript.anchorClicked.connect(self._on_anchor)
        # Read-only: an undo stack would keep every streamed tick's insertion for as long as the chat lives.
        self.transcript.document().setUndoRedoEnabled(False)
        self.input = QPlainTextEdit(placeholderText="Message — Ctrl+Enter to send, Esc to stop")
        self.input.setMaximumHeight(90)
        self.edit_banner = QLabel(EDIT_BANNER, wordWrap=True, visible=False)
        self.edit_banner.setStyleSheet("background:#fff4d6;color:#5a4500;padding:2px 6px;border-radius:3px")
        self.cancel_edit_button = QPushButton("Cancel edit", visible=False)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.regenerate_button = QPushButton("Regenerate")
        self.clear_button = QPushButton("Clear")
        self.colour_tokens = QPushButton("Colour by probability", checkable=True, checked=True)
        self.markdown = QPushButton("Markdown", checkable=True, checked=True,
                                    toolTip="Render replies as Markdown (every token stays clickable); "
                                            "off: the tokens exactly as generated")
        # Speculative decoding's marks: their legend and the drafts the model rejected (struck through when
        # shown; hidden by default, as they are not part of the reply). Both appear once a reply has marks.
        self.show_rejected = QPushButton("Rejected drafts", checkable=True, checked=False, visible=False,
                                         toolTip="Show the drafted tokens the model rejected, struck through, "
                                                 "before the token it drew instead")
        self.spec_legend = QLabel(SPEC_LEGEND, wordWrap=True, visible=False)
        self.spec_rate = QLabel("", visible=False, wordWrap=True,
                                toolTip="Of the drafted tokens the model has judged in this reply, the share it "
                                        "kept; and the tokens each forward pass of the model gave (1 without "
                                        "speculative decoding)")
        self._spec_figures: tuple[float, float] | None = None
        self.context_meter = QProgressBar(visible=False, textVisible=True, minimumWidth=METER_MIN_PX, maximumWidth=240)
        self.context_meter.setMaximumHeight(18)
        self.samples = SamplesView(visible=False)
        self.samples.chosen.connect(self.sample_chosen)
        self.status = QLabel("")
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # a long note never widens the chat
        self.status.linkActivated.connect(lambda link: self.undo_requested.emit() if link == "undo" else None)
        self.send_button.clicked.connect(self._submit)
        self.stop_button.clicked.connect(self.stop_requested)
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        self.clear_button.clicked.connect(self.clear_requested)
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        for toggle in (self.colour_tokens, self.show_rejected, self.markdown):
            toggle.toggled.connect(lambda _: self._render())
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self._submit)
        # `activated` needs a callable: a Signal object passed here made every Esc press a TypeError.
        QShortcut(QKeySequence("Escape"), self, activated=self._escape_pressed)
        self.set_busy(False)

    def _layout(self) -> None:
        # The toggles sit beside the system prompt, so the Send row stays short: its width is the chat's
        # minimum, and with it the window's.
        top = QHBoxLayout()
        top.addWidget(self.system, 1)
        for w in (self.colour_tokens, self.markdown, self.show_rejected):
            top.addWidget(w)
        editing = QHBoxLayout()
        editing.addWidget(self.edit_banner, 1)
        editing.addWidget(self.cancel_edit_button)
        buttons = QHBoxLayout()
        for w in (self.send_button, self.stop_button, self.regenerate_button, self.clear_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.context_meter)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.samples)
        layout.addWidget(self.spec_rate)  # on its own line: beside the legend it squeezed it to four lines
        layout.addWidget(self.spec_legend)
        layout.addLayout(editing)
        layout.addWidget(self.input)
        layout.addLayout(buttons)
        # Its own line: beside four buttons and the meter it had ~30 px at 1366×768 ("Dele…", the Undo link
        # off screen; review of issue 20).
        layout.addWidget(self.status)

    # -- slots --------------------------------------------------------------------------------
    def set_busy(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.regenerate_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def show_conversation(self, views: list[MessageView]) -> None:
        """The whole conversation (the active path), drawn at once: after a turn, an edit, a switch."""
        self._turns = list(views)
        self._render()

    def show_samples(self, views: list[MessageView]) -> None:
        """A reply's branches side by side (n samples, best-of, beams); `hide_samples` closes them."""
        self.samples.show_views(views)

    def hide_samples(self) -> None:
        self.samples.hide()

    def set_context(self, used: int, limit: int, pending: int = 0) -> None:
        """The context meter: tokens used of `limit`; a warning when the message being typed (`pending`
        tokens) would not fit."""
        self.context_meter.setVisible(limit > 0)
        if limit <= 0:
            return
        self.context_meter.setRange(0, limit)
        self.context_meter.setValue(min(used + pending, limit))  # the bar: what sending the draft would take
        full = used + pending >= limit
        # Full, the warning takes the word "tokens"'s room, and the meter widens to its text: at 1366×768 it had
        # 150 px and read "257 / 256 tokens — won'" (a 128k context's figures are longer still).
        text = f"{used + pending}/{limit} won't fit" if full else f"{used + pending} / {limit} tokens"
        self.context_meter.setFormat(text)
        self.context_meter.setMinimumWidth(max(METER_MIN_PX, self.context_meter.fontMetrics().horizontalAdvance(text)
                                               + METER_PADDING_PX))
        self.context_meter.setStyleSheet("QProgressBar::chunk{background:#c0392b}" if full else "")
        self.context_meter.setToolTip(
            f"{used} of the model's {limit} context tokens are used"
            + (f"; the message being typed (~{pending} tokens) would not fit" if full else
               f" ({pending} more in the message being typed)" if pending else ""))

    def context_warning(self) -> bool:
        return not self.context_meter.isHidden() and "won't fit" in self.context_meter.format()

    def begin_edit(self, key: int, text: str) -> None:
        """The input box edits message `key`: Send makes a new branch, Esc (or Cancel edit) gives up."""
        self.editing = key
        self.input.setPlainText(text)
        self.input.setFocus()
        self.edit_banner.show()
        self.cancel_edit_button.show()
        self.send_button.setText("Send edit")

    def cancel_edit(self) -> None:
        if self.editing >= 0:
            self.editing = -1
            self.input.clear()
        self.edit_banner.hide()
        self.cancel_edit_button.hide()
        self.send_button.setText("Send")

    def show_undo(self, text: str) -> None:
        self.status.setText(f"{html.escape(text)} <a href='undo'>Undo</a>")

    def add_user(self, text: str) -> None:
        self._turns.append(MessageView("user", text, markdown=False))
        self._render()

    def add_assistant_text(self, text: str) -> None:
        """A finished reply without per-token records (e.g. from a saved conversation)."""
        self._turns.append(MessageView("assistant", text))
        self._render()

    def add_message(self, message: dict) -> None:
        """Any message of a saved conversation, drawn as the live chat drew it. System messages are the
        system prompt's (not shown)."""
        view = message_view(message)
        if view is not None:
            self._turns.append(view)
            self._render()

    def begin_assistant(self) -> None:
        self._live = []
        self._spec_figures = None  # a reply's figures are its own: shown again with its first step
        self.spec_rate.hide()
        self._render()

    def append_tokens(self, tokens: list[tuple]) -> None:
        """Several streamed tokens at once, appended at the end of the transcript in place of the cursor
        mark: the cost of a tick is its lines', not the conversation's. Each is (index, text, prob),
        optionally followed by spec_marks(record)."""
        figures = next((t[5:7] for t in reversed(tokens) if len(t) > 5), None)  # the tick's newest step
        if figures is not None and figures != self._spec_figures:
            self._spec_figures = figures
            self.spec_rate.setText(spec_figures_text(*figures))
            self.spec_rate.show()
        self._note_marks(tokens)
        self._live.extend(tokens)
        if not self._live_shown:
            return self._render()
        first = len(self._live_lines) - 1
        split_lines(tokens, self._live_lines)
        self._redraw_live_from(first)

    def end_assistant(self, note: str = "") -> None:
        self._turns.append(MessageView("assistant", "".join(t[1] for t in self._live), list(self._live),
                                       note=note))
        live_shown, self._live, self._live_shown = self._live_shown, [], False
        if not live_shown:
            return self._render()
        with self._following():  # the document holds the reply already: the note replaces the mark
            cursor = QTextCursor(self.transcript.document())
            cursor.movePosition(QTextCursor.End)
            cursor.movePosition(QTextCursor.PreviousCharacter, QTextCursor.KeepAnchor)
            if cursor.selectedText() == CURSOR_MARK:
                cursor.removeSelectedText()
            if note:
                cursor.insertHtml(f"<i style='color:#888'>&nbsp;[{html.escape(note)}]</i>")

    def show_error(self, message: str) -> None:
        self._turns.append(MessageView("error", message, markdown=False))
        self._render()

    def clear(self) -> None:
        self._turns, self._live = [], []
        self.marked_step = None  # a new conversation numbers its steps from 0 again
        self.spec_legend.hide()  # shown again by the next reply with speculative marks
        self.spec_rate.hide()
        self._spec_figures = None
        self.show_rejected.hide()
        self.samples.hide()
        self.cancel_edit()
        self._render()

    def drop_last_turn(self) -> None:
        if self._turns:
            self._turns.pop()
            self._render()

    def transcript_text(self) -> str:
        return self.transcript.toPlainText()

    def reply_tokens(self, index: int = -1) -> list[tuple]:
        """The tokens of the `index`-th drawn message (as given to append_tokens / MessageView)."""
        return list(self._turns[index].tokens or [])

    def spec_figures(self) -> tuple[float, float] | None:
        """(acceptance rate, tokens per target forward) shown for the reply, None when it has none."""
        return self._spec_figures

    # -- internals ----------------------------------------------------------------------------
    def _submit(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or not self.send_button.isEnabled():
            return
        key = self.editing
        self.input.clear()
        self.cancel_edit()
        if key >= 0:
            self.edit_submitted.emit(key, text)
        else:
            self.submitted.emit(text)

    def _escape_pressed(self) -> None:
        if self.editing >= 0:
            self.cancel_edit()
        else:
            self.stop_requested.emit()

    def _note_marks(self, tokens) -> None:
        if self.spec_legend.isHidden() and any(len(t) > 3 and t[3] for t in tokens):
            self.spec_legend.show()  # the first speculative mark: say what marks mean
            self.show_rejected.show()

    def _live_html(self) -> str:
        """The live reply's lines as HTML, under the toggles as they are now."""
        rendered, _ = reply_lines(split_lines(self._live), "live", self.colour_tokens.isChecked(),
                                  self.show_rejected.isChecked(), self.markdown.isChecked())
        return "".join(f"<p style='{block_css(line)}'>{text}</p>" for line, text in rendered)

    def _render(self) -> None:
        """The whole conversation, from what is kept per message, under the toggles as they are now."""
        colour, rejected = self.colour_tokens.isChecked(), self.show_rejected.isChecked()
        busy = self.stop_button.isEnabled()
        for view in self._turns:
            self._note_marks(view.tokens or ())
        parts = [message_html(v, colour, rejected, busy, self.markdown.isChecked()) for v in self._turns]
        self._live_shown = bool(self._live) or busy
        if self._live_shown:
            self._live_lines = split_lines(self._live)
            rendered, self._live_states = reply_lines(self._live_lines, "live", colour, rejected,
                                                      self.markdown.isChecked())
            parts.append(f"<p style='{HEADER}'>{header_html(MessageView('assistant', ''), True)}</p>")
            parts += [f"<p style='{block_css(line)}'>{text}{CURSOR_MARK if i == len(rendered) - 1 else ''}</p>"
                      for i, (line, text) in enumerate(rendered)]
        self.transcript.setHtml("".join(parts))
        if self.marked_step is not None and self._token(self.marked_step) != self._marked_token:
            self.marked_step = None  # another branch renumbered the steps: that index is another token now
        mark_step(self.transcript, self.marked_step)  # the selected token, found again in the new document
        if self._live_shown:
            self._live_block = self.transcript.document().lastBlock().position()
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _redraw_live_from(self, first: int) -> None:
        """Lines `first`.. of the live reply drawn again in place of what the document has from line
        `first`'s paragraph on (that line and the cursor mark), then the mark."""
        rendered, states = reply_lines(self._live_lines[first:], "live", self.colour_tokens.isChecked(),
                                       self.show_rejected.isChecked(), self.markdown.isChecked(),
                                       self._live_states[first])
        self._live_states[first:] = states
        with self._following():
            cursor = QTextCursor(self.transcript.document())
            cursor.beginEditBlock()  # one layout for the tick
            cursor.setPosition(self._live_block)
            cursor.movePosition(QTextCursor.End, QTextCursor.KeepAnchor)
            cursor.removeSelectedText()
            for i, (line, text) in enumerate(rendered):
                if i:
                    cursor.insertBlock(_block_format(line), QTextCharFormat())
                else:
                    cursor.setBlockFormat(_block_format(line))
                    cursor.setCharFormat(QTextCharFormat())
                self._live_block = cursor.block().position()
                if text:
                    cursor.insertHtml(text)
            cursor.insertText(CURSOR_MARK, QTextCharFormat())  # plain: not part of the last token's link
            cursor.endEditBlock()

    @contextmanager
    def _following(self):
        """Keep the transcript scrolled to the end if it was there (a reader who scrolled up stays put)."""
        bar = self.transcript.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        yield
        if at_end:
            bar.setValue(bar.maximum())

    def _token(self, index: int) -> tuple | None:
        """Step `index`'s (index, text, prob) as shown now (None: not shown)."""
        tokens = [t for view in self._turns for t in (view.tokens or ())] + list(self._live)
        return next((tuple(t[:3]) for t in tokens if t[0] == index), None)

    def _on_anchor(self, url: QUrl) -> None:
        kind, _, rest = url.toString().partition(":")
        if kind == "step":
            self.marked_step = int(rest)
            self._marked_token = self._token(self.marked_step)
            mark_step(self.transcript, self.marked_step)
            self.step_clicked.emit(int(rest))
        elif kind == "code":
            self._copy_code(*rest.rsplit(":", 1))
        elif kind == "nav":
            key, step = rest.split(":")
            self.sibling_requested.emit(int(key), int(step))
        elif kind == "edit":
            view = next((v for v in self._turns if v.key == int(rest)), None)
            if view is not None:
                self.begin_edit(view.key, view.text)
        elif kind in ("copy", "md", "del", "regen", "cmp"):
            key = int(rest)
            {"copy": lambda: self.copy_requested.emit(key, False), "md": lambda: self.copy_requested.emit(key, True),
             "del": lambda: self.delete_requested.emit(key), "regen": lambda: self.regenerate_message.emit(key),
             "cmp": lambda: self.compare_requested.emit(key)}[kind]()

    def _copy_code(self, key: str, block: str) -> None:
        if key == "live":
            text = "".join(t[1] for t in self._live)
        else:
            view = next((v for v in self._turns if str(v.key) == key), None)
            text = view.text if view else ""
        blocks = code_blocks(text)
        if int(block) < len(blocks):
            QGuiApplication.clipboard().setText(blocks[int(block)])
            self.status.setText("Code block copied")


def _block_format(line) -> QTextBlockFormat:
    """The paragraph format block_css gives the same line in HTML (the streamed and the drawn-at-once
    reply must lay out alike)."""
    margin, background = block_style(line)
    fmt = QTextBlockFormat()
    fmt.setTopMargin(0)
    fmt.setBottomMargin(0)
    fmt.setLeftMargin(margin)
    if background:
        fmt.setBackground(QColor(*background))
    return fmt


def message_view(message: dict) -> MessageView | None:
    """A saved conversation's message as the live chat drew it: tool calls and results as one line."""
    role, content = message.get("role"), message.get("content") or ""
    if role == "assistant" and message.get("tool_calls"):
        calls = "; ".join(call_text(call) for call in message["tool_calls"])
        return MessageView("assistant", f"{content}\n[tool call] {calls}" if content else f"[tool call] {calls}",
                           markdown=False)
    if role == "tool":
        name = message.get("name") or message.get("tool_call_id") or "tool"
        return MessageView("tool", f"[{name} result] {content}", markdown=False)
    if role in ("user", "assistant"):
        return MessageView(role, content, markdown=role == "assistant")
    return None
