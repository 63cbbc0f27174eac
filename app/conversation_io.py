"""Conversations on disk: JSON with the title, the system prompt, the active path's messages and (version
2) the whole branch tree (app/conversation_tree.py), optionally every shown step's record (probabilities,
routing, attention, memory) for later study. Plain JSON: nothing in it is executed when opened. Messages
are OpenAI-shaped, tool calls and tool results included; `read` checks every field's type and keeps only
the fields a chat template reads. Version-1 files (linear messages) open as a one-branch tree."""
from __future__ import annotations

import dataclasses
import json
from array import array
from dataclasses import dataclass
from pathlib import Path

from app.conversation_tree import ConversationTree
from app.files import atomic_write, json_text

FORMAT = "glassbox-conversation/2"
FORMATS = ("glassbox-conversation/1", FORMAT)


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, array):  # a step's stored logits
        return value.tolist()
    return value


def save(path, system: str, messages: list[dict], steps=(), model: str = "", tree: ConversationTree | None = None,
         title: str = "") -> None:
    atomic_write(Path(path), json_text(conversation_data(system, messages, steps, model, tree, title)))


def conversation_data(system: str, messages: list[dict], steps=(), model: str = "",
                      tree: ConversationTree | None = None, title: str = "") -> dict:
    data = {"format": FORMAT, "title": title, "model": model, "system": system, "messages": messages}
    if tree is not None:
        data["tree"] = tree.to_json()
    if steps:
        data["steps"] = [_plain(s) for s in steps]
    return data


@dataclass
class Saved:
    system: str
    messages: list[dict]  # the active path
    tree: ConversationTree
    title: str
    model: str
    data: dict  # the file's JSON, for callers that keep more in it (autosave)


def load(path) -> tuple[str, list[dict]]:
    """-> (system prompt, the active path's messages). Raises ValueError with a clear message."""
    saved = read(path)
    return saved.system, saved.messages


def read(path) -> Saved:
    """A conversation file, every branch. Raises ValueError with a clear message for anything else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable conversation file ({e})") from None
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        raise ValueError(f"{path}: not a Glassbox conversation (expected format {FORMAT!r})")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ValueError(f"{path}: messages must be a list of {{role, content}} objects")
    system, title, model = data.get("system"), data.get("title", ""), data.get("model", "")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"{path}: the system prompt must be text")
    if not isinstance(title, str) or not isinstance(model, str):
        raise ValueError(f"{path}: the title and the model must be text")
    checked = []
    for i, m in enumerate(messages):
        try:
            checked.append(message(m))
        except ValueError as e:
            raise ValueError(f"{path}: message {i + 1} {e}") from None
    if data.get("tree") is None:
        tree = ConversationTree.from_messages(checked)
    else:
        try:
            tree = ConversationTree.from_json(data["tree"], message)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return Saved(system or "", tree.messages(), tree, title, model, data)


ROLES = ("system", "user", "assistant", "tool")


def message(m) -> dict:
    """One message as the app writes it (OpenAI's shapes): {role, content} for system / user / assistant;
    an assistant turn that called tools also has `tool_calls` (its content may be empty or null); a tool's
    result is {role: "tool", content, name and/or tool_call_id}. Returns only those keys, types checked."""
    if not isinstance(m, dict):
        raise ValueError("is not a {role, content} object")
    role = m.get("role")
    if role not in ROLES:
        raise ValueError(f"has the unknown role {role!r} (expected one of {', '.join(ROLES)})")
    content = m.get("content")
    calls = m.get("tool_calls")
    if calls is not None and role != "assistant":
        raise ValueError(f"({role}) has tool_calls, which only the assistant makes")
    if calls is not None:
        if not isinstance(calls, list) or not calls:
            raise ValueError("has tool_calls that are not a non-empty list")
        content = "" if content is None else content  # OpenAI's null content beside calls
    if not isinstance(content, str):
        raise ValueError(f"({role}) has no text content")
    out = {"role": role, "content": content}
    for key in ("name", "tool_call_id") if role == "tool" else ("name",):
        if key in m:
            if not isinstance(m[key], str):
                raise ValueError(f"({role}) has a {key} that is not text")
            out[key] = m[key]
    if calls is not None:
        out["tool_calls"] = [_tool_call(c) for c in calls]
    return out


def _tool_call(call) -> dict:
    """{"type": "function", "function": {"name", "arguments"}} (+ "id"); arguments: an object or JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError("has a tool call without a function name")
    if not isinstance(function.get("arguments", {}), (dict, str)):
        raise ValueError("has a tool call whose arguments are neither an object nor text")
    if call.get("type", "function") != "function" or not isinstance(call.get("id", ""), str):
        raise ValueError("has a tool call that is not a function call")
    out = {"type": "function", "function": {"name": function["name"], "arguments": function.get("arguments", {})}}
    if "id" in call:
        out = {"id": call["id"], **out}
    return out
