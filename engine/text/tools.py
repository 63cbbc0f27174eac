"""Tool calling: offer tools to the model through its chat template, constrain its call to the tools'
JSON schemas, parse the call, run a built-in tool (a calculator) or take the user's result, and hand
the result back so the chat goes on.

Calls are written the way Hermes / Qwen-style templates expect and most tool-trained models emit:
<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>. The constraint is a Lark grammar for
engine/text/constraints.py whose JSON part is the union of the tools' schemas, so the arguments always
parse and validate. Plain data only here; nothing runs model code.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass, field, replace

from engine.text.constraints import JSON_LAYOUT
from engine.records import SamplingParams

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})  # JSON schema

    def spec(self) -> dict:
        """The OpenAI / transformers function format chat templates read from their `tools` variable."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict

    def message(self) -> dict:
        """The assistant turn that made this call, as templates expect it in the history."""
        return {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": self.name, "arguments": self.arguments}}]}


def template_supports_tools(source: str) -> bool:
    """Whether a chat template reads the `tools` variable at all (otherwise offering tools does nothing)."""
    return re.search(r"\btools\b", source or "") is not None


def call_schema(tools: list[Tool]) -> dict:
    """JSON schema of one call: {"name": one of the tools, "arguments": that tool's parameters}."""
    if not tools:
        raise ValueError("no tools to call")
    options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return {**(options[0] if len(options) == 1 else {"anyOf": options}), "x-guidance": JSON_LAYOUT}


def call_grammar(tools: list[Tool], required: bool = True, tokenizer=None) -> str:
    """Lark grammar (for SamplingParams(constraint_kind="grammar")): a tool call, or with required=False
    either a call or a plain answer that does not start like one. Markers that are one special token in
    the vocabulary are written as that token (<[id]>), as the model would emit them."""
    open_, close = (_marker(m, tokenizer) for m in (CALL_OPEN, CALL_CLOSE))
    call = f'call: {open_} "\\n" %json {json.dumps(call_schema(tools))} "\\n" {close}'
    if required:
        return f"start: call\n{call}\n"
    return f"start: call | text\n{call}\ntext: /[^<]((.|\\n)*)/\n"


def _marker(text: str, tokenizer) -> str:
    if tokenizer is not None:
        ids = tokenizer.encode(text)
        if len(ids) == 1 and ids[0] in tokenizer.special_ids:
            return f"<[{ids[0]}]>"
    return json.dumps(text)


def tool_call_params(params: SamplingParams, tools: list[Tool], required: bool = True,
                     tokenizer=None) -> SamplingParams:
    """`params` with the call grammar as its constraint."""
    return replace(params, constraint_kind="grammar", constraint=call_grammar(tools, required, tokenizer))


def parse_tool_calls(text: str, tools: list[Tool] | None = None) -> list[ToolCall]:
    """Every call in a reply: <tool_call> blocks, or a reply that is one bare JSON call (Llama 3 style,
    "parameters" for "arguments"). Unknown tool names and malformed JSON are skipped."""
    blocks = _CALL_BLOCK.findall(text) or ([text.strip()] if text.strip().startswith("{") else [])
    known = None if tools is None else {t.name for t in tools}
    calls = []
    for block in blocks:
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):  # some models double-encode the arguments
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                continue
        if isinstance(arguments, dict) and (known is None or data["name"] in known):
            calls.append(ToolCall(data["name"], arguments))
    return calls


def tool_result_message(call: ToolCall, result: str) -> dict:
    return {"role": "tool", "name": call.name, "content": result}


# --- the built-in calculator ------------------------------------------------------------------------

CALCULATOR = Tool(
    "calculator", "Evaluate an arithmetic expression with + - * / ** % and parentheses.",
    {"type": "object", "additionalProperties": False, "required": ["expression"],
     # The pattern admits only flat expressions, which always parse (the calculator itself takes more).
     "properties": {"expression": {"type": "string", "maxLength": 60, "description": "e.g. 12 * 7 - 3",
                                   "pattern": r"^-?[0-9]{1,6}(\.[0-9]{1,3})?"
                                              r"( ?[-+*/%] ?-?[0-9]{1,6}(\.[0-9]{1,3})?){0,4}$"}}})
BUILTIN_TOOLS = {CALCULATOR.name: CALCULATOR}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Mod: operator.mod, ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPONENT = 64  # 10**64 is plenty; 9**9**9 would hang the worker
MAX_BITS = 4096  # and repeated powers stay bounded too


def calculate(expression: str) -> str:
    """Arithmetic only, by walking the syntax tree: no names, calls or attributes, so nothing else runs."""
    try:
        value = _eval(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
        return f"error: {e}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        result = _OPS[type(node.op)](left, right)
        if isinstance(result, float) and not math.isfinite(result):
            raise OverflowError("the result is not finite")
        if isinstance(result, int) and result.bit_length() > MAX_BITS:
            raise OverflowError(f"the result has over {MAX_BITS} bits")
        return result
    raise ValueError(f"only numbers and + - * / ** % are allowed, not {type(node).__name__}")


def run_builtin(call: ToolCall) -> str | None:
    """The built-in tool's result, or None when the call is for a tool the user must answer."""
    if call.name == CALCULATOR.name:
        return calculate(str(call.arguments.get("expression", "")))
    return None
