"""The conversation: transcript with streamed, probability-coloured tokens, a system prompt and an
input box. Emits what the user asks for; knows nothing about the engine or threads."""
from __future__ import annotations

import html
from contextlib import contextmanager

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QKeySequence, QShortcut, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QPushButton, QSizePolicy,
                               QTextBrowser, QVBoxLayout, QWidget)


CURSOR_MARK = "▍"  # ends the reply being streamed
# A reply's lines are paragraphs of their own, not <br> line breaks: Qt lays out a whole paragraph again
# for every insertion, so a streamed token costs what its line costs, not what the whole reply costs
# (a 2,000-token reply in one paragraph took ~17 ms a tick). Margins as one paragraph would have them.
LINE_BREAK = object()  # in a reply's segments: the next line starts
FIRST, MIDDLE, LAST = "margin-bottom:0px", "margin-top:0px;margin-bottom:0px", "margin-top:0px"


def prob_colour(p: float) -> str:
    """Low probability reads warm, high reads cool; light enough to keep text legible."""
    p = max(0.0, min(1.0, p))
    r, g, b = int(255 - 80 * p), int(200 + 40 * p), int(190 + 60 * p)
    return f"#{r:02x}{g:02x}{b:02x}"


# Speculative decoding marks (StepRecord.spec_role): kept drafts underlined, a token the target drew after
# rejecting a draft in red after the rejected drafts struck through, the bonus token overlined.
SPEC_STYLE = {"accepted": "text-decoration:underline", "resampled": "color:#b00020",
              "bonus": "text-decoration:overline"}
SPEC_LEGEND = ("Speculative decoding: <u>underlined</u> = a draft the model accepted · "
               "<span style='color:#b00020;background:#f2e6e6'>red</span> = drawn by the model after rejecting "
               "a draft · "
               "<span style='text-decoration:overline'>overlined</span> = the bonus token of a step")


def spec_marks(record) -> tuple:
    """(role, text of the drafts rejected just before this token) of a StepRecord, for append_tokens; on the
    last token of a speculative step also the reply's running acceptance rate and tokens per target forward
    (each forward keeps the accepted drafts plus one token of its own)."""
    spec = getattr(record, "spec", None)
    if spec is None:
        return record.spec_role, ""
    rejected = "".join(d.text for d in spec.drafted if not d.accepted) if record.spec_role == "resampled" else ""
    return record.spec_role, rejected, spec.acceptance_rate, spec.mean_accepted + 1


def spec_figures_text(rate: float, tokens_per_forward: float) -> str:
    return f"<b>{rate:.0%}</b> of drafts accepted · <b>{tokens_per_forward:.2f}</b> tokens per model forward pass"


def call_text(call: dict) -> str:
    """'calculator({'expression': '2+2'})' for an OpenAI-style tool_calls entry (arguments a dict or JSON)."""
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    return f"{function.get('name', '?')}({function.get('arguments', '')})"


class ChatPanel(QWidget):
    submitted = Signal(str)
    stop_requested = Signal()
    regenerate_requested = Signal()
    clear_requested = Signal()
    step_clicked = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        # Finished turns: HTML, or a model turn's tokens and closing note, drawn when the transcript is (so
        # the colour and rejected-draft toggles apply to every turn).
        self._turns: list[str | tuple[list, str]] = []
        self._live: list[tuple] = []  # the assistant turn being streamed: (index, text, prob, *marks) per token
        # The document ends with the live turn's cursor mark (▍) and holds every token of _live: streamed
        # tokens are then appended in place, not by re-rendering the whole conversation on every tick.
        self._live_shown = False
        self._setup_ui()
        self._layout()

    def _setup_ui(self) -> None:
        self.system = QLineEdit(placeholderText="System prompt (optional)")
        self.transcript = QTextBrowser(openLinks=False)
        self.transcript.anchorClicked.connect(self._on_anchor)
        # Read-only: an undo stack would keep every streamed tick's insertion for as long as the chat lives.
        self.transcript.document().setUndoRedoEnabled(False)
        self.input = QPlainTextEdit(placeholderText="Message — Ctrl+Enter to send, Esc to stop")
        self.input.setMaximumHeight(90)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.regenerate_button = QPushButton("Regenerate")
        self.clear_button = QPushButton("Clear")
        self.colour_tokens = QPushButton("Colour by probability", checkable=True, checked=True)
        # Speculative decoding's marks: their legend and the drafts the model rejected (struck through when
        # shown; hidden by default, as they are not part of the reply). Both appear once a reply has marks.
        self.show_rejected = QPushButton("Rejected drafts", checkable=True, checked=False, visible=False,
                                         toolTip="Show the drafted tokens the model rejected, struck through, "
                                                 "before the token it drew instead")
        self.spec_legend = QLabel(SPEC_LEGEND, wordWrap=True, visible=False)
        # The reply's running figures, over the legend while a speculative reply streams.
        self.spec_rate = QLabel("", visible=False, wordWrap=True,
                                toolTip="Of the drafted tokens the model has judged in this reply, the share it "
                                        "kept; and the tokens each forward pass of the model gave (1 without "
                                        "speculative decoding)")
        self._spec_figures: tuple[float, float] | None = None
        self.status = QLabel("")
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)  # a long note never widens the chat
        self.send_button.clicked.connect(self._submit)
        self.stop_button.clicked.connect(self.stop_requested)
        self.regenerate_button.clicked.connect(self.regenerate_requested)
        self.clear_button.clicked.connect(self.clear_requested)
        self.colour_tokens.toggled.connect(lambda _: self._render())
        self.show_rejected.toggled.connect(lambda _: self._render())
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self._submit)
        # `activated` needs a callable: a Signal object passed here made every Esc press a TypeError.
        QShortcut(QKeySequence("Escape"), self, activated=self.stop_requested.emit)
        self.set_busy(False)

    def _layout(self) -> None:
        # The colour toggle sits beside the system prompt, so the Send row stays short: its width is the
        # chat's minimum, and with it the window's.
        top = QHBoxLayout()
        top.addWidget(self.system, 1)
        top.addWidget(self.colour_tokens)
        top.addWidget(self.show_rejected)
        buttons = QHBoxLayout()
        for w in (self.send_button, self.stop_button, self.regenerate_button, self.clear_button):
            buttons.addWidget(w)
        buttons.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.spec_rate)  # on its own line: beside the legend it squeezed it to four lines
        layout.addWidget(self.spec_legend)
        layout.addWidget(self.input)
        layout.addLayout(buttons)

    # -- slots --------------------------------------------------------------------------------
    def set_busy(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.regenerate_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def add_user(self, text: str) -> None:
        self._turns.append(f"<p><b>You</b><br>{self._escape(text)}</p>")
        self._render()

    def add_assistant_text(self, text: str) -> None:
        """A finished reply without per-token records (e.g. from a saved conversation)."""
        self._turns.append(f"<p><b>Model</b><br>{self._escape(text)}</p>")
        self._render()

    def add_message(self, message: dict) -> None:
        """Any message of a saved conversation, drawn as the live chat drew it: a user's or the model's
        turn, the model's tool calls, a tool's result. System messages are the system prompt's (not shown)."""
        role, content = message.get("role"), message.get("content") or ""
        if role == "user":
            self.add_user(content)
        elif role == "assistant" and message.get("tool_calls"):
            calls = "; ".join(call_text(call) for call in message["tool_calls"])
            self.add_assistant_text(f"{content}\n[tool call] {calls}" if content else f"[tool call] {calls}")
        elif role == "assistant":
            self.add_assistant_text(content)
        elif role == "tool":
            name = message.get("name") or message.get("tool_call_id") or "tool"
            self._turns.append(f"<p><b>Tool</b><br>[{self._escape(name)} result] {self._escape(content)}</p>")
            self._render()

    def begin_assistant(self) -> None:
        self._live = []
        self._spec_figures = None  # a reply's figures are its own: shown again with its first step
        self.spec_rate.hide()
        self._render()

    def append_tokens(self, tokens: list[tuple]) -> None:
        """Several streamed tokens at once, appended at the end of the transcript in place of the cursor
        mark: the cost of a tick is the new tokens', not the conversation's. Each is (index, text, prob),
        optionally followed by spec_marks(record)."""
        figures = next((t[5:7] for t in reversed(tokens) if len(t) > 5), None)  # the tick's newest step
        if figures is not None and figures != self._spec_figures:
            self._spec_figures = figures
            self.spec_rate.setText(spec_figures_text(*figures))
            self.spec_rate.show()
        if not self._live_shown:
            self._live.extend(tokens)
            return self._render()
        self._live.extend(tokens)
        self._replace_mark(self._segments(tokens), mark=True)

    def end_assistant(self, note: str = "") -> None:
        suffix = f"<i style='color:#888'>&nbsp;[{html.escape(note)}]</i>" if note else ""
        self._turns.append((list(self._live), suffix))
        live_shown, self._live, self._live_shown = self._live_shown, [], False
        if live_shown:  # the document already holds the turn: drop the mark, add the note
            self._replace_mark([suffix], mark=False)
        else:
            self._render()

    def show_error(self, message: str) -> None:
        self._turns.append(f"<p style='color:#b00020'><b>Error</b>: {html.escape(message)}</p>")
        self._render()

    def clear(self) -> None:
        self._turns, self._live = [], []
        self.spec_legend.hide()  # shown again by the next reply with speculative marks
        self.spec_rate.hide()
        self._spec_figures = None
        self.show_rejected.hide()
        self._render()

    def drop_last_turn(self) -> None:
        if self._turns:
            self._turns.pop()
            self._render()

    def transcript_text(self) -> str:
        return self.transcript.toPlainText()

    def spec_figures(self) -> tuple[float, float] | None:
        """(acceptance rate, tokens per target forward) shown for the reply, None when it has none."""
        return self._spec_figures

    # -- internals ----------------------------------------------------------------------------
    def _submit(self) -> None:
        text = self.input.toPlainText().strip()
        if text and self.send_button.isEnabled():
            self.input.clear()
            self.submitted.emit(text)

    def _escape(self, text: str) -> str:
        return html.escape(text).replace("\n", "<br>")

    def _live_html(self) -> str:
        return self._reply_html(self._segments(self._live))

    def _segments(self, tokens) -> list:
        """The tokens as HTML strings (one link per token and line) and LINE_BREAKs where their text
        has newlines. Each is (index, text, prob, *marks)."""
        segments = []
        for index, text, prob, *marks in tokens:
            role, rejected = (marks + ["", ""])[:2]  # then the step's figures, read by append_tokens
            if role and self.spec_legend.isHidden():  # the first speculative mark: say what marks mean
                self.spec_legend.show()
                self.show_rejected.show()
            style = f"background:{prob_colour(prob)};color:#111" if self.colour_tokens.isChecked() else "color:inherit"
            if rejected and self.show_rejected.isChecked():
                segments.append(f"<span style='text-decoration:line-through;color:#999'>{self._escape(rejected)}</span>")
            style = f"text-decoration:none;white-space:pre-wrap;{style};{SPEC_STYLE.get(role, '')}"
            note = f", {role} (speculative)" if role else ""
            for i, line in enumerate(text.split("\n")):
                if i:
                    segments.append(LINE_BREAK)
                if line:
                    segments.append(f"<a href='step:{index}' style='{style}' "
                                    f"title='p = {prob:.3f}{note}'>{html.escape(line)}</a>")
        return segments

    @staticmethod
    def _reply_html(segments: list) -> str:
        """A model turn: its lines as paragraphs, spaced as one paragraph would be."""
        lines, line = [], []
        for segment in segments:
            if segment is LINE_BREAK:
                lines.append("".join(line))
                line = []
            else:
                line.append(segment)
        lines.append("".join(line))
        if len(lines) == 1:
            return f"<p><b>Model</b><br>{lines[0]}</p>"
        styles = [FIRST] + [MIDDLE] * (len(lines) - 2) + [LAST]
        lines[0] = f"<b>Model</b><br>{lines[0]}"
        return "".join(f"<p style='{style}'>{line}</p>" for style, line in zip(styles, lines))

    def _render(self) -> None:
        """The whole conversation, from what is kept per turn: HTML, or a model turn's tokens drawn under
        the toggles as they are now (a new turn, a toggle, a clear)."""
        self._live_shown = bool(self._live) or self.stop_button.isEnabled()
        live = self._reply_html(self._segments(self._live) + [CURSOR_MARK]) if self._live_shown else ""
        turns = (t if isinstance(t, str) else self._reply_html(self._segments(t[0]) + [t[1]]) for t in self._turns)
        self.transcript.setHtml("".join(turns) + live)
        bar = self.transcript.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _replace_mark(self, segments: list, mark: bool) -> None:
        """Replace the live turn's trailing cursor mark by `segments` (HTML strings and LINE_BREAKs), and
        the mark again if `mark`."""
        with self._following():
            cursor = QTextCursor(self.transcript.document())
            # One edit block, and one insertion per line: the document lays a changed paragraph out again
            # for every insertion otherwise (a tick's links one by one cost more than the whole tick).
            cursor.beginEditBlock()
            cursor.movePosition(QTextCursor.End)
            cursor.movePosition(QTextCursor.PreviousCharacter, QTextCursor.KeepAnchor)
            if cursor.selectedText() == CURSOR_MARK:
                cursor.removeSelectedText()
            else:
                cursor.movePosition(QTextCursor.End)
            line: list[str] = []
            for segment in segments:
                if segment is not LINE_BREAK:
                    line.append(segment)
                    continue
                if any(line):
                    cursor.insertHtml("".join(line))
                line = []
                above = QTextBlockFormat(cursor.blockFormat())  # the line so far: no space below it now
                margin = above.bottomMargin()  # the turn's last line's, which moves to the new last line
                above.setBottomMargin(0)
                cursor.setBlockFormat(above)
                below = QTextBlockFormat(above)
                below.setTopMargin(0)
                below.setBottomMargin(margin)
                cursor.insertBlock(below, QTextCharFormat())
            if any(line):
                cursor.insertHtml("".join(line))
            if mark:
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

    def _on_anchor(self, url: QUrl) -> None:
        if url.toString().startswith("step:"):
            self.step_clicked.emit(int(url.toString()[5:]))
