"""Stop strings as the user types them: one per line, with backslash escapes (\\n, \\t, \\r, \\\\) so that a
stop string may hold a newline; spaces are kept as typed. Turns the lines into SamplingParams.stop and back."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QPlainTextEdit

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
SHOWN = {v: "\\" + k for k, v in ESCAPES.items()}


def unescape(line: str) -> str:
    """`line` as the stop string it stands for; an unknown escape (\\x) is kept as typed."""
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in ESCAPES:
            out.append(ESCAPES[line[i + 1]])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out)


def escape(text: str) -> str:
    return "".join(SHOWN.get(c, c) for c in text)


class StopStringsEdit(QPlainTextEdit):
    """A short text box: each non-empty line is a stop string."""

    changed = Signal()

    def __init__(self):
        super().__init__(placeholderText="One per line, e.g.  ###  or  \\nUser:  (\\n = new line)")
        self.setToolTip("Generation stops when the reply contains any of these; the reply ends before it. "
                        "One per line; spaces count; write a new line as \\n, a tab as \\t, a backslash as \\\\")
        self.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.setMaximumHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.textChanged.connect(self.changed)

    def stops(self) -> tuple[str, ...]:
        lines = [unescape(line) for line in self.toPlainText().split("\n") if line]
        return tuple(dict.fromkeys(lines))  # in order, once each

    def set_stops(self, stops: tuple[str, ...]) -> None:
        if self.stops() != tuple(stops):  # leave a half-typed line alone when nothing changes
            self.setPlainText("\n".join(escape(s) for s in stops))
