"""The client's own tools (OpenAI `tools`): offered to the model through its chat template, forced with a
JSON-schema constraint (tool_choice "required" or a named function: the reply is one bare
{"name", "arguments"} object), and read back out of the reply as OpenAI `tool_calls`.

The engine's tool support (engine/text/tools.py) is reached by the window only through the facade, which
offers its built-in calculator; app/ may not import engine.text, so the client-tool schema and parser are
here. Replies are read the way engine/text/tools.py writes and reads calls: Hermes-style
<tool_call>{...}</tool_call> blocks, or a reply that is one bare JSON call.
"""
from __future__ import annotations

import json
import re
import uuid

_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def call_schema(tools) -> dict:
    """JSON schema of one call to one of `tools` (OpenAI function specs)."""
    options = [{"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                "properties": {"name": {"const": t["function"]["name"]},
                               "arguments": t["function"].get("parameters") or {"type": "object"}}}
               for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_calls(text: str, tools) -> tuple[str | None, list[dict]]:
    """(the reply's prose or None, its calls as OpenAI `tool_calls` entries); calls to unknown functions and
    malformed JSON are left in the prose."""
    known = {t["function"]["name"] for t in tools}
    blocks = _CALL_BLOCK.findall(text)
    if not blocks and text.strip().startswith("{"):
        blocks = [text.strip()]
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or data.get("name") not in known:
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": data["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    if not calls:
        return text, []
    prose = _CALL_BLOCK.sub("", text).strip() if _CALL_BLOCK.search(text) else ""
    return prose or None, calls
