"""Conversations on disk: JSON with the messages and system prompt, optionally every generated
step's record (probabilities, routing, attention, memory) for later study. Plain JSON: nothing
in it is executed when opened."""
from __future__ import annotations

import dataclasses
import json
from array import array
from pathlib import Path

from app.files import atomic_write, json_text

FORMAT = "glassbox-conversation/1"


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


def save(path, system: str, messages: list[dict], steps=(), model: str = "") -> None:
    data = {"format": FORMAT, "model": model, "system": system, "messages": messages}
    if steps:
        data["steps"] = [_plain(s) for s in steps]

    atomic_write(Path(path), json_text(data))  # never a half-written conversation


def load(path) -> tuple[str, list[dict]]:
    """-> (system prompt, messages). Raises ValueError with a clear message for anything else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable conversation file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a Glassbox conversation (expected format {FORMAT!r})")
    messages = data.get("messages")
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and m.get("role") in ("user", "assistant", "system") and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        raise ValueError(f"{path}: messages must be a list of {{role, content}} objects")
    return str(data.get("system") or ""), [{"role": m["role"], "content": m["content"]} for m in messages]
