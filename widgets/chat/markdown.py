"""Markdown one line at a time, so a reply is rendered while it streams and every token keeps its own link:
a line's block kind (heading, list item, quote, table row, code, fence, rule) and, per character, its inline
style, whether it is markup to hide, or a character drawn as another (a list's "-" as "•"). A code block is
the one state carried from line to line. Plain Python: the panel turns this into HTML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

FENCE = re.compile(r"^\s*(```+|~~~+)\s*(\S*)")
HEADING = re.compile(r"^(#{1,6})(\s+)")
BULLET = re.compile(r"^(\s*)([-*+])(\s+)")
NUMBERED = re.compile(r"^(\s*)(\d+[.)])(\s+)")
QUOTE = re.compile(r"^\s*>\s?")
TABLE = re.compile(r"^\s*\|")
RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
# `code`, **bold** / __bold__, *italic* / _italic_ (not inside words for _): group pairs (markup, inside)
INLINE = re.compile(r"(`+)(.+?)\1|(\*\*|__)(?=\S)(.+?)(?<=\S)\3|(\*|(?<!\w)_)(?=\S)(.+?)(?<=\S)\5")
HIDE = "hide"


@dataclass
class Line:
    kind: str = "text"  # text, heading, bullet, numbered, quote, table, rule, code, fence
    level: int = 0  # a heading's level; a list item's indentation (in steps of two spaces)
    styles: list[str] = field(default_factory=list)  # per character: "", HIDE, or "b", "i", "code", "bi"
    shown_as: dict[int, str] = field(default_factory=dict)  # characters drawn as another: "-" as "•"
    language: str = ""  # an opening fence's language


def parse_line(text: str, in_code: bool, markdown: bool = True) -> tuple[Line, bool]:
    """The line's rendering and whether a code block is open after it."""
    line = Line(styles=[""] * len(text))
    if not markdown:
        return line, in_code
    fence = FENCE.match(text)
    if fence:
        line.kind, line.language = "fence", ("" if in_code else fence.group(2))
        for i in range(fence.start(1), fence.end(1)):
            line.styles[i] = HIDE
        return line, not in_code
    if in_code:
        line.kind = "code"
        return line, True
    if RULE.match(text):
        line.kind = "rule"
        return line, False
    start = 0
    if m := HEADING.match(text):
        line.kind, line.level, start = "heading", len(m.group(1)), m.end()
        _hide(line, 0, m.end())
    elif m := BULLET.match(text):
        line.kind, line.level, start = "bullet", len(m.group(1)) // 2, m.end()
        line.shown_as[m.start(2)] = "•"
    elif m := NUMBERED.match(text):
        line.kind, line.level, start = "numbered", len(m.group(1)) // 2, m.end()
    elif m := QUOTE.match(text):
        line.kind, start = "quote", m.end()
        _hide(line, 0, m.end())
    elif TABLE.match(text):
        line.kind = "table"
        for i, ch in enumerate(text):
            if ch == "|":
                line.shown_as[i] = "│"
    _inline(text, start, line)
    return line, False


def _hide(line: Line, start: int, end: int) -> None:
    for i in range(start, end):
        line.styles[i] = HIDE


def _inline(text: str, start: int, line: Line) -> None:
    for m in INLINE.finditer(text, start):
        for markup, inside, style in ((1, 2, "code"), (3, 4, "b"), (5, 6, "i")):
            if m.group(markup):
                _hide(line, m.start(markup), m.end(markup))
                _hide(line, m.end(inside), m.end())
                for i in range(m.start(inside), m.end(inside)):
                    line.styles[i] = style
                break


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of `text`, in order (what a code block's copy button copies)."""
    blocks, current = [], None
    for raw in text.split("\n"):
        if FENCE.match(raw):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(raw)
    if current is not None:  # still streaming
        blocks.append("\n".join(current))
    return blocks


def plain_text(text: str) -> str:
    """A Markdown reply as the text it reads as: markup gone, bullets as •, code as it is."""
    out, in_code = [], False
    for raw in text.split("\n"):
        line, in_code_after = parse_line(raw, in_code)
        if line.kind == "fence":
            in_code = in_code_after
            continue
        in_code = in_code_after
        out.append("".join(line.shown_as.get(i, ch) for i, ch in enumerate(raw) if line.styles[i] != HIDE))
    return "\n".join(out)
