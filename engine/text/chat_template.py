"""Render a model's chat template (messages -> prompt text) exactly as transformers'
`apply_chat_template` does, inside the budgeted sandbox of engine/text/template_sandbox.py.

A template is code from a stranger: it gets plain data only, no Python internals, and bounded
work; anything it does wrong surfaces as a TemplateError. Tokenizing the prompt is not done here.
"""
from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Mapping
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace

from engine.errors import TemplateError
from engine.text.builtin_templates import CHATML
from engine.text.template_sandbox import BudgetedSandbox, Budget

MAX_SOURCE_CHARS = 1_000_000  # real templates are a few kB
MAX_OUTPUT_CHARS = 1_000_000
MAX_DEPTH = 64  # nesting of the messages and tools handed to the template
MAX_JSON_INDENT = 16


class ChatTemplate:
    """One compiled chat template. Render from one thread at a time (the work budget is per template)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", path=None):
        self.source, self.bos_token, self.eos_token, self.path = source, bos_token, eos_token, path
        self._where = f" in {path}" if path else ""
        if not isinstance(source, str) or len(source) > MAX_SOURCE_CHARS:
            raise TemplateError(f"the chat template{self._where} is not a string of at most {MAX_SOURCE_CHARS:,} chars")
        self._env = _hf_environment()
        try:
            self._template = self._env.compile_guarded(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"the chat template{self._where} has a syntax error on line {e.lineno}: "
                                f"{e.message}") from None

    @classmethod
    def default(cls) -> "ChatTemplate":
        return cls(CHATML)

    @classmethod
    def of(cls, tokenizer, fallback: str | None = None) -> "ChatTemplate":
        """The template a model's tokenizer ships (engine.text.tokenizer.Tokenizer); without one, `fallback`
        (a source, e.g. builtin_templates.fallback_template(arch)) or ChatML."""
        if not tokenizer.chat_template:
            if fallback is None:
                return cls.default()
            return cls(fallback, tokenizer.bos_token or "", tokenizer.eos_token or "")
        return cls(tokenizer.chat_template, tokenizer.bos_token or "", tokenizer.eos_token or "")

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def compiled(source: str, bos_token: str = "", eos_token: str = "") -> "ChatTemplate":
        """`source` compiled once and kept: a template override is rendered on every turn and every
        token count, and compiling (parse, guard, codegen) costs more than rendering."""
        return ChatTemplate(source, bos_token, eos_token)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text for `messages`; `extra` (tools, documents, enable_thinking, ...) is passed
        to the template as variables, as transformers passes its template kwargs."""
        context = _plain({"messages": messages, "bos_token": self.bos_token, "eos_token": self.eos_token,
                          **extra, "add_generation_prompt": add_generation_prompt}, 0)
        self._env.budget = Budget()
        pieces, size = [], 0
        try:
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateError(f"the chat template produced over {MAX_OUTPUT_CHARS:,} characters; stopped")
                pieces.append(piece)
        except TemplateError as e:
            raise TemplateError(f"{e} ({self.path})" if self.path else str(e)) from None
        except SecurityError as e:
            raise TemplateError(f"the chat template{self._where} tried to leave its sandbox: {e}") from None
        except RecursionError:
            raise TemplateError(f"the chat template{self._where} recursed too deeply") from None
        except Exception as e:  # noqa: BLE001 - undefined names, type errors in the template's own logic, MemoryError
            raise TemplateError(f"the chat template{self._where} failed: {type(e).__name__}: {e}") from None
        return "".join(pieces)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in transformers;
    for rendering it is a plain block."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Namespace(Namespace):
    """jinja2's namespace without underscore names (as transformers restricts it) and with a short
    repr, so printing one cannot dump (or size-dodge) everything stored in it."""

    def __init__(*args, **kwargs):  # noqa: N805 - jinja2's signature trick: `self` may be a keyword
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        Namespace.__setitem__(self, name, value)

    def __repr__(self):
        return "<Namespace>"

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateError(f"the chat template stores {name!r} on a namespace; underscore names are refused")


def _hf_environment() -> BudgetedSandbox:
    """The environment transformers renders chat templates in, so the same template gives the same text."""
    env = BudgetedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       namespace=_Namespace, dict=_Dict())
    return env


class _Dict:
    """`dict` for templates: builds dicts and nothing else (the type itself stays out of reach)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args):
        return dict.fromkeys(*args)


def _raise_exception(message):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' version: no HTML escaping (jinja2's own tojson escapes <, >, & and ').
    if len(" " * indent if isinstance(indent, int) else indent or "") > MAX_JSON_INDENT:
        raise TemplateError(f"the chat template asks for a JSON indent of {indent!r}; at most {MAX_JSON_INDENT}")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _plain(value, depth: int):
    """The template sees JSON-like data only: no objects whose methods it could call."""
    if depth > MAX_DEPTH:
        raise TemplateError(f"the messages given to the chat template nest deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (bool, numbers.Integral, numbers.Real, str):  # subclasses: enums, numpy scalars, Markup
        if isinstance(value, kind):
            return {numbers.Integral: int, numbers.Real: float}.get(kind, kind)(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return str(value)
