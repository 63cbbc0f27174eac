"""Chat templates, as shipped inside model files, rendered in jinja2's immutable sandbox.

A template is code from a stranger: it gets no Python internals (the sandbox refuses
`__class__`, `__globals__` and friends), no mutation of its inputs, and bounded work — its loops,
string repetition and output are capped, so a hostile or broken template fails quickly with a
TemplateError instead of hanging the app.
"""
from __future__ import annotations

import datetime
import json

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from engine.errors import TemplateError

MAX_OUTPUT_CHARS = 1_000_000
MAX_LOOP_STEPS = 1_000_000  # range() items over the whole render
MAX_REPEAT_CHARS = 1_000_000  # 'x' * n and [..] * n

# ChatML, used when a model ships no template of its own.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus work limits; a fresh budget per render."""

    def __init__(self):
        # Same settings HF uses for chat templates, so the same template renders the same text.
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                         extensions=["jinja2.ext.loopcontrols"])
        self.loop_steps = 0
        self.globals["range"] = self._range
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self.filters["tojson"] = _tojson

    def _range(self, *args):
        for value in range(*args):
            self.loop_steps += 1
            if self.loop_steps > MAX_LOOP_STEPS:
                raise TemplateError(f"the chat template loops more than {MAX_LOOP_STEPS} times; refusing to run it")
            yield value

    def call_binop(self, context, operator, left, right):
        if operator == "*" and isinstance(left, (str, list, tuple)) and isinstance(right, int):
            if len(left) * right > MAX_REPEAT_CHARS:
                raise TemplateError("the chat template builds an oversized string or list")
        if operator == "*" and isinstance(right, (str, list, tuple)) and isinstance(left, int):
            if len(right) * left > MAX_REPEAT_CHARS:
                raise TemplateError("the chat template builds an oversized string or list")
        return super().call_binop(context, operator, left, right)


# Sandboxed environments only route binary operators through call_binop when asked to.
_BoundedSandbox.intercepted_binops = frozenset(["*"])


def _raise_exception(message):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, indent=None, ensure_ascii=False, **_):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", path=None):
        self.source, self.bos_token, self.eos_token, self.path = source, bos_token, eos_token, path
        where = f" in {path}" if path else ""
        try:
            self._env = _BoundedSandbox()
            self._template = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"the chat template{where} has a syntax error on line {e.lineno}: {e.message}") from None

    @classmethod
    def default(cls) -> "ChatTemplate":
        return cls(CHATML)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        self._env.loop_steps = 0
        context = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                   "bos_token": self.bos_token, "eos_token": self.eos_token, **extra}
        pieces, size = [], 0
        try:
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateError(f"the chat template produced over {MAX_OUTPUT_CHARS} characters; stopped")
                pieces.append(piece)
        except TemplateError:
            raise
        except SecurityError as e:
            raise TemplateError(f"the chat template tried to leave its sandbox and was stopped: {e}") from None
        except RecursionError:
            raise TemplateError("the chat template recursed too deeply") from None
        except Exception as e:  # undefined variables, type errors in the template's own logic
            raise TemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
        return "".join(pieces)
