"""How the chat draws messages, as HTML: a header per message (role, token count, the ‹ i/n › navigator and
its actions as links) and a reply's lines, each token its own link coloured by probability, with Markdown
applied per line (widgets/chat/markdown.py): markup characters are hidden, but a token made only of markup
is drawn as a thin coloured space rather than dropped, so every token stays clickable. No widget state here."""
from __future__ import annotations

import html
from dataclasses import dataclass

from widgets.chat.markdown import HIDE, Line, parse_line

CURSOR_MARK = "▍"  # ends the reply being streamed
ROLE_NAMES = {"user": "You", "assistant": "Model", "tool": "Tool", "error": "Error", "system": "System"}
LINK = "text-decoration:none;color:#3a6ea5"
HEADER = "margin-top:10px;margin-bottom:2px"
BODY = "margin-top:0px;margin-bottom:0px"
CODE_BACKGROUND = (127, 127, 127, 38)  # translucent: reads on light and dark themes
HEADING_SIZES = {1: "xx-large", 2: "x-large", 3: "large"}
RUN_CSS = {"": "", "b": "font-weight:600", "i": "font-style:italic", "code": "font-family:monospace"}
# A token made only of markup ("**", "##", a fence) is drawn as a thin space in its probability colour: hidden
# as markup, still its own link (its tooltip says what it was).
MARKUP_TOKEN = "\u2009"


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


@dataclass
class MessageView:
    """One message as the chat draws it. `tokens`: a reply's (index, text, prob, *spec marks) per token
    (index -1: no record to show, still drawn and coloured); None draws `text` (Markdown for a reply)."""

    role: str
    text: str
    tokens: list | None = None
    key: int = -1  # the message's id in the conversation; -1: no actions
    note: str = ""  # how a reply ended
    position: tuple[int, int] = (1, 1)  # among its siblings: the navigator's i/n
    token_count: int | None = None
    markdown: bool = True  # a reply's text is Markdown; a user's is shown as typed


def split_lines(tokens, lines: list | None = None) -> list[list[tuple]]:
    """Tokens into lines of (token, piece, first piece of the token); `lines` is extended in place (its
    last line goes on) when given."""
    lines = lines if lines is not None else [[]]
    for token in tokens:
        for i, piece in enumerate(token[1].split("\n")):
            if i:
                lines.append([])
            if piece:
                lines[-1].append((token, piece, i == 0))
    return lines


def block_style(line: Line) -> tuple[int, tuple | None]:
    """(left margin in px, background RGBA or None) of a line's paragraph."""
    if line.kind in ("bullet", "numbered"):
        return 14 + 14 * line.level, None
    if line.kind == "quote":
        return 14, None
    if line.kind in ("code", "fence"):
        return 6, CODE_BACKGROUND
    return 0, None


def block_css(line: Line) -> str:
    margin, background = block_style(line)
    css = f"{BODY};margin-left:{margin}px"
    return css + (f";background-color:rgba({','.join(map(str, background[:3]))},{background[3] / 255:.3f})"
                  if background else "")


def line_css(line: Line) -> str:
    if line.kind == "heading":
        return f"font-weight:600;font-size:{HEADING_SIZES.get(line.level, 'medium')}"
    if line.kind in ("code", "table"):
        return "font-family:monospace"
    if line.kind == "fence":
        return "font-family:monospace;color:#888"
    if line.kind == "quote":
        return "font-style:italic;color:#666"
    return ""


def line_html(pieces: list[tuple], line: Line, colour: bool, show_rejected: bool, copy_href: str = "") -> str:
    """One line's HTML: a link per token run (index -1 included), plain spans for text without tokens."""
    out, offset, base = [], 0, line_css(line)
    for token, piece, first in pieces:
        index, _, prob, *marks = token
        role, rejected = (list(marks) + ["", ""])[:2]
        if first and rejected and show_rejected:
            out.append(f"<span style='text-decoration:line-through;color:#999'>{escape(rejected)}</span>")
        styles = line.styles[offset:offset + len(piece)]
        only_markup = all(s == HIDE for s in styles)
        runs: list[list[str]] = [["", MARKUP_TOKEN]] if only_markup else []
        for i, ch in enumerate(piece if not only_markup else ""):
            if styles[i] == HIDE:
                continue
            style = styles[i]
            ch = line.shown_as.get(offset + i, ch)
            if runs and runs[-1][0] == style:
                runs[-1][1] += ch
            else:
                runs.append([style, ch])
        for style, text in runs:
            out.append(_run(index, text, prob, role, f"{base};{RUN_CSS[style]}", colour,
                            f", markup {piece!r}" if only_markup else ""))
        offset += len(piece)
    if copy_href:
        out.append(f"&nbsp;<a href='{copy_href}' style='{LINK};font-family:sans-serif' "
                   f"title='Copy this code block'>copy code</a>")
    return "".join(out)


def _run(index, text: str, prob: float, role: str, css: str, colour: bool, markup: str = "") -> str:
    if index is None:  # text without tokens (a saved reply)
        return f"<span style='white-space:pre-wrap;{css}'>{html.escape(text)}</span>"
    look = f"background:{prob_colour(prob)};color:#111" if colour else "color:inherit"
    note = f", {role} (speculative)" if role else ""
    style = f"text-decoration:none;white-space:pre-wrap;{look};{SPEC_STYLE.get(role, '')};{css}"
    return f"<a href='step:{index}' style='{style}' title='p = {prob:.3f}{note}{html.escape(markup)}'>{html.escape(text)}</a>"


def reply_lines(lines: list[list[tuple]], key, colour: bool, show_rejected: bool, markdown: bool,
                state: tuple[bool, int] = (False, 0)) -> tuple[list[tuple[Line, str]], list[tuple[bool, int]]]:
    """Each line's (Line, HTML), and the (in code block, code blocks opened) state before each line."""
    out, states = [], []
    in_code, blocks = state
    for pieces in lines:
        states.append((in_code, blocks))
        text = "".join(piece for _, piece, _ in pieces)
        line, after = parse_line(text, in_code, markdown)
        copy = f"code:{key}:{blocks}" if line.kind == "fence" and not in_code else ""
        blocks += bool(copy)
        in_code = after
        out.append((line, line_html(pieces, line, colour, show_rejected, copy)))
    return out, states


def escape(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def header_html(view: MessageView, busy: bool) -> str:
    colour = "#b00020" if view.role == "error" else "inherit"
    parts = [f"<b style='color:{colour}'>{ROLE_NAMES.get(view.role, view.role.title())}</b>"]
    if view.token_count is not None:
        parts.append(f"<span style='color:#888'>{view.token_count} tokens</span>")
    i, n = view.position
    if n > 1 and view.key >= 0:
        parts.append(f"<a href='nav:{view.key}:-1' style='{LINK}' title='Previous branch'>&nbsp;‹&nbsp;</a>"
                     f"{i}/{n}<a href='nav:{view.key}:1' style='{LINK}' title='Next branch'>&nbsp;›&nbsp;</a>")
    if view.key >= 0 and view.role != "error":
        actions = [] if busy else [(f"edit:{view.key}", "✎ edit", "Edit and resend: a new branch")] \
            if view.role == "user" else []
        actions += [(f"copy:{view.key}", "copy", "Copy as text"),
                    (f"md:{view.key}", "copy as Markdown", "Copy as Markdown")]
        if not busy:
            actions.append((f"del:{view.key}", "✕ delete", "Delete this message and what follows it (undoable)"))
            if view.role == "assistant":
                actions.append((f"regen:{view.key}", "↻ regenerate", "A new reply here, as a branch"))
                if n > 1:
                    actions.append((f"cmp:{view.key}", "⇆ side by side", "This reply's branches side by side"))
        parts.append(" ".join(f"<a href='{href}' style='{LINK}' title='{tip}'>{label}</a>"
                              for href, label, tip in actions))
    rest = "&nbsp;&nbsp;".join(parts[1:])
    return parts[0] + (f"&nbsp;&nbsp;<span style='font-size:small'>{rest}</span>" if rest else "")


def message_html(view: MessageView, colour: bool, show_rejected: bool, busy: bool, markdown: bool = True) -> str:
    """A finished message: its header paragraph and its lines."""
    if view.tokens is not None:
        lines = split_lines(view.tokens)
    else:
        lines = split_lines([(None, view.text, 1.0)])
    markdown = markdown and view.markdown and view.role == "assistant"
    rendered, _ = reply_lines(lines, view.key, colour, show_rejected, markdown)
    note = f"<i style='color:#888'>&nbsp;[{html.escape(view.note)}]</i>" if view.note else ""
    body = [f"<p style='{block_css(line)}'>{text}{note if i == len(rendered) - 1 else ''}</p>"
            for i, (line, text) in enumerate(rendered)]
    return f"<p style='{HEADER}'>{header_html(view, busy)}</p>" + "".join(body)
