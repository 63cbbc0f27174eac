"""An OpenAI request body read into what the engine takes: SamplingParams, the number of choices, what to
report (logprobs, usage while streaming), and the prompt (chat messages or completion text) left for the
engine's thread to tokenize. Anything malformed raises ApiError(400) naming the field, as OpenAI does."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from app.serve.errors import bad_request
from app.serve.tool_calls import call_schema
from engine.records import SamplingParams

MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 << 20  # a long chat fits; a runaway upload does not
    max_tokens: int = 4096  # the most a request may ask to generate (and the default cap)
    max_n: int = 8  # choices per request


@dataclass(frozen=True)
class ParsedRequest:
    chat: bool  # /v1/chat/completions, else /v1/completions
    model: str
    params: SamplingParams  # max_new_tokens is 0 until the prompt's length is known (see max_new_tokens)
    max_tokens: int | None  # what the client asked for, None: as much as fits under the cap
    n: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    logprobs: bool
    top_logprobs: int
    messages: tuple = ()  # chat: the messages as templates read them
    prompt: str | tuple[int, ...] = ""  # completion: text, or token ids
    tools: tuple = ()  # chat: function specs offered through the template
    tool_choice: str | dict = "auto"  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}


def parse(body, chat: bool, limits: Limits) -> ParsedRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = _get(body, "model", str)
    if model is None:
        raise bad_request("you must provide a model parameter", "model")
    n = _get(body, "n", int, 1)
    if not 1 <= n <= limits.max_n:
        raise bad_request(f"n must be between 1 and {limits.max_n}", "n")
    max_tokens = _get(body, "max_completion_tokens", int) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _get(body, "max_tokens", int)
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise bad_request(f"max_tokens must be between 1 and this server's limit, {limits.max_tokens}", "max_tokens")
    stream = bool(_get(body, "stream", bool, False))
    options = _get(body, "stream_options", dict) or {}
    logprobs, top = _logprobs(body, chat)
    tools, tool_choice = _tools(body) if chat else ((), "none")
    kind, constraint = _constraint(body, tools, tool_choice)
    try:
        params = SamplingParams(
            temperature=_number(body, "temperature", 1.0), top_p=_number(body, "top_p", 1.0),
            top_k=_get(body, "top_k", int, 0), min_p=_number(body, "min_p", 0.0),
            typical_p=_number(body, "typical_p", 1.0), repetition_penalty=_number(body, "repetition_penalty", 1.0),
            presence_penalty=_number(body, "presence_penalty", 0.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0),
            seed=_get(body, "seed", int), stop=_stops(body), max_new_tokens=0,
            ignore_eos=bool(_get(body, "ignore_eos", bool, False)),  # vLLM's extra field (benchmarks)
            constraint_kind=kind, constraint=constraint)
    except ValueError as e:  # SamplingParams checks its own ranges and says which field
        raise bad_request(str(e)) from None
    if params.top_k < 0:
        raise bad_request("top_k must be >= 0", "top_k")
    return ParsedRequest(chat, model, params, max_tokens, n, stream, bool(options.get("include_usage")), logprobs,
                         top, messages=_messages(body) if chat else (), prompt=() if chat else _prompt(body),
                         tools=tools, tool_choice=tool_choice)


def max_new_tokens(request: ParsedRequest, prompt_tokens: int, context: int, limits: Limits) -> int:
    """Tokens to generate: what was asked, else as many as the context leaves, under the server's cap."""
    room = context - prompt_tokens
    return min(request.max_tokens or room, room, limits.max_tokens)


def _get(body: dict, name: str, kind: type, default=None):
    value = body.get(name)
    if value is None:
        return default
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"{name} must be {'an' if kind is int else 'a'} {kind.__name__}", name)
    return value


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a finite number", name)
    return float(value)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad_request(f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return tuple(stops)


def _logprobs(body: dict, chat: bool) -> tuple[bool, int]:
    if chat:
        wanted = bool(_get(body, "logprobs", bool, False))
        top = _get(body, "top_logprobs", int, 0)
        if top and not wanted:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    else:  # completions: logprobs is the number of alternatives
        top = _get(body, "logprobs", int)
        wanted, top = top is not None, top or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs")
    return wanted, top


def _messages(body: dict) -> tuple[dict, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    names = {}  # tool_call_id -> function name: templates name a tool's result after its call
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a role", f"messages[{i}]")
        message = {"role": m["role"], "content": _content(m.get("content"), i)}
        if m.get("tool_calls"):
            message["tool_calls"] = [_call_for_template(c, i, names) for c in m["tool_calls"]]
        if m["role"] == "tool":
            message["name"] = m.get("name") or names.get(m.get("tool_call_id"), "")
            message["tool_call_id"] = m.get("tool_call_id", "")
        out.append(message)
    return tuple(out)


def _content(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise bad_request(f"messages[{i}].content: only text is supported", f"messages[{i}].content")


def _call_for_template(call, i: int, names: dict) -> dict:
    """An assistant message's tool call as templates read it: arguments as an object, not OpenAI's JSON text."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"messages[{i}].tool_calls: each needs function.name", f"messages[{i}].tool_calls")
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise bad_request(f"messages[{i}].tool_calls: arguments are not JSON", f"messages[{i}].tool_calls")
    names[call.get("id")] = function["name"]
    return {"id": call.get("id", ""), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _prompt(body: dict) -> str | tuple[int, ...]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # one prompt in a list; several prompts in one request are not supported
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return tuple(prompt)
    raise bad_request("prompt must be one non-empty string or one list of token ids", "prompt")


def _tools(body: dict) -> tuple[tuple, str | dict]:
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise bad_request("tools must be a list of {type: function, function: {name, parameters}}", "tools")
    choice = body.get("tool_choice") or ("auto" if tools else "none")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in {t["function"]["name"] for t in tools}:
            raise bad_request("tool_choice names a function that is not in tools", "tool_choice")
    elif choice not in ("none", "auto", "required") or (choice == "required" and not tools):
        raise bad_request("tool_choice must be none, auto, required (with tools) or a function", "tool_choice")
    return tuple(tools), choice


def _constraint(body: dict, tools: tuple, tool_choice) -> tuple[str, str]:
    """(constraint_kind, constraint) for SamplingParams: response_format, or a forced tool call."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None if fmt is None else "?"
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    if kind not in (None, "text") and forced:
        raise bad_request("response_format and a forced tool call cannot both constrain the answer", "response_format")
    if forced:
        allowed = [t for t in tools if not isinstance(tool_choice, dict)
                   or t["function"]["name"] == tool_choice["function"]["name"]]
        return "json_schema", json.dumps(call_schema(allowed))
    if kind in (None, "text"):
        return "", ""
    if kind == "json_object":
        return "json_schema", json.dumps({"type": "object"})
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return "json_schema", json.dumps(schema)
    raise bad_request("response_format.type must be text, json_object or json_schema", "response_format")
