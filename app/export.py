"""A conversation's active path as Markdown (title, model, system prompt, each message under its role,
tool calls and results as fenced code, the messages' own Markdown and code blocks kept as written), and a
saved conversation copied out as JSON in the format it was saved in. No dialogs: the window asks where."""
from __future__ import annotations

import json
import re
from pathlib import Path

from app.files import atomic_write, json_text
from app.library import read

ROLE_HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def fenced(text: str, language: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it, so it cannot close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}"


def _arguments(arguments) -> str:
    """A call's arguments, pretty-printed when they are (or parse as) a JSON object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return json.dumps(arguments, indent=2, ensure_ascii=False)


def message_markdown(m: dict) -> str:
    role = m["role"]
    heading = ROLE_HEADINGS.get(role, role.title())
    if role == "tool" and m.get("name"):
        heading += f" result: `{m['name']}`"
    parts = [f"### {heading}"]
    content = m.get("content") or ""
    if role == "tool":
        parts.append(fenced(content))  # a tool's output is data, not Markdown to be rendered
    elif content.strip():
        parts.append(content.strip("\n"))
    for call in m.get("tool_calls", ()):
        function = call["function"]
        parts.append(f"**Tool call:** `{function['name']}`")
        parts.append(fenced(_arguments(function.get("arguments", {})), "json"))
    return "\n\n".join(parts)


def markdown(title: str, system: str, messages: list[dict], model: str = "") -> str:
    """The conversation as one Markdown document, in the order the model read it."""
    parts = [f"# {title.strip() or 'Untitled conversation'}"]
    if model:
        parts.append(f"*Model: {model}*")
    if system.strip():
        parts.append("### System prompt\n\n" + "\n".join(f"> {line}" if line else ">"
                                                          for line in system.strip("\n").splitlines()))
    parts += [message_markdown(m) for m in messages]
    return "\n\n".join(parts) + "\n"


def write_markdown(source, destination) -> None:
    """A saved conversation (a library file) as Markdown. Raises ValueError for an unreadable file."""
    c = read(source)
    atomic_write(Path(destination), markdown(c.title, c.system, c.messages, c.model))


def write_json(source, destination) -> None:
    """A saved conversation copied out in the file format it was saved in (branches, title and records
    kept), once it reads as a conversation. Raises ValueError for an unreadable file."""
    read(source)
    data = json.loads(Path(source).read_text(encoding="utf-8"))
    atomic_write(Path(destination), json_text(data))
