"""jinja2's immutable sandbox plus a work budget, for running templates we did not write.

The sandbox keeps a template away from Python internals; the budget keeps it from hanging the app
or eating its memory. Every loop step, call, filter, `~` join and piece of output is charged, and
operations that can blow up in one go (`'x' * n`, `**`, format widths, replace, join, indent, ...)
are sized before they run. Over budget -> TemplateError. HF chat-template conventions live in
chat_template.py.
"""
from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Iterator

from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from engine.errors import TemplateError

# CPU time of the rendering thread for one render: a busy machine (or the engine working in another
# thread) slows a render down without making it a runaway, so wall-clock time would fail good templates
MAX_SECONDS = 2.0
MAX_STEPS = 1_000_000  # loop iterations, calls, filters and output pieces in one render
MAX_SIZE = 1_000_000  # characters or items in any one value the template builds; also any count it asks for
MAX_BUILT = 20_000_000  # characters built over one render: bounds memory
MAX_INT_BITS = 10_000  # template arithmetic never needs more; int * int can double its size per loop step


class Budget:
    """The work left to one render (or one compile: jinja2 runs filters on constants while compiling)."""

    def __init__(self):
        self.steps, self.built_chars, self.deadline = 0, 0, time.thread_time() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"the chat template took over {MAX_STEPS:,} steps; stopped")
        if time.thread_time() > self.deadline:
            raise TemplateError(f"the chat template ran for over {MAX_SECONDS:g} s of CPU time; stopped")

    def expect(self, size: int, what: str) -> None:
        if size > MAX_SIZE:
            raise TemplateError(f"the chat template asked for {what} of {size:,} (limit {MAX_SIZE:,}); stopped")

    def built(self, value):
        if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
            self.expect(len(value), "a value")
            self.built_chars += len(value)
            if self.built_chars > MAX_BUILT:
                raise TemplateError(f"the chat template built over {MAX_BUILT:,} characters; stopped")
        return value


def text_size(value, limit: int = MAX_SIZE) -> int:
    """About how long str(value) is, found without building it; stops counting once past `limit`
    (a list of a million references to one long string is cheap to hold and huge to print)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.items() if isinstance(item, dict) else item)
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:  # floats, None, jinja objects: short reprs
            total += 32
    return total


def format_widths(fmt: str, percent: bool) -> int:
    """The widths and precisions a format string asks for, summed: `'%0999999999d' % 1` or
    `'{:>999999999}'.format(x)` is one short call that builds a gigabyte."""
    if percent:
        specs = re.findall(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d*)(?:\.(\*|\d*))?", fmt)
        numbers = [n for spec in specs for n in spec if n]
    else:
        try:
            fields = [spec for _, _, spec, _ in string.Formatter().parse(fmt) if spec]
        except ValueError:
            return 0  # malformed: str.format raises its own error
        if any("{" in spec for spec in fields):
            raise TemplateError("the chat template uses a nested format field; not supported")
        numbers = [n for spec in fields for n in re.findall(r"\d+", spec)]
    if "*" in numbers:
        raise TemplateError("the chat template uses a '*' format width; not supported")
    return sum(int(n) for n in numbers)


def _expected_size(name: str, target, args: tuple, kwargs: dict) -> int | None:
    """The size a string operation will produce, for the ones that can multiply their input."""
    if not isinstance(target, str):
        return None

    def arg(i, key, default):
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name == "replace":
        old, new, count = str(arg(0, "old", "")), str(arg(1, "new", "")), arg(2, "count", None)
        hits = target.count(old) if old else len(target) + 1
        hits = min(hits, count) if isinstance(count, int) and count >= 0 else hits
        return len(target) + hits * max(len(new) - len(old), 0)
    if name == "expandtabs":
        return len(target) + target.count("\t") * int(arg(0, "tabsize", 8))
    if name == "indent":
        width = arg(0, "width", 4)
        return len(target) + (target.count("\n") + 1) * (width if isinstance(width, int) else len(str(width)))
    if name == "wordwrap":
        width, wrap = max(int(arg(0, "width", 79)), 1), arg(2, "wrapstring", None) or "\n"
        return len(target) + (len(target) // width + target.count(" ") + 1) * len(wrap)
    if name == "translate":
        table = arg(0, "table", {})
        values = table.values() if isinstance(table, dict) else ()
        return len(target) * max((len(v) for v in values if isinstance(v, str)), default=1)
    return None


def _check_counts(budget: Budget, values) -> None:
    """Any number a template passes to a function is a potential size (center, to_bytes, batch, ...)."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            budget.expect(abs(value), "a count")


class _Guards(Extension):
    """The budget's hooks inside compiled templates, reached as extension attributes so a template
    can neither name nor shadow them."""

    def loop_items(self, iterable):
        for item in iterable:
            self.environment.budget.step()
            yield item

    def emit(self, value):
        self.environment.budget.expect(text_size(value), "output")
        return value

    def concat(self, *values):
        self.environment.budget.expect(sum(text_size(v) for v in values), "a joined string")
        return "".join(map(str, values))


class _AddGuards(NodeTransformer):
    """Route every loop's items, every piece of output and every `~` join through the guards."""

    def __init__(self, guards: _Guards):
        self.guards = guards

    def _call(self, name: str, args: list, lineno: int) -> nodes.Call:
        return nodes.Call(self.guards.attr(name, lineno=lineno), args, [], None, None, lineno=lineno)

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = self._call("loop_items", [node.iter], node.lineno)
        return node

    def visit_Output(self, node):
        node = self.generic_visit(node)
        node.nodes = [self._call("emit", [child], child.lineno) for child in node.nodes]
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return self._call("concat", node.nodes, node.lineno)


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose every call, filter and risky operator is charged to
    `self.budget`. One render at a time: the budget is per environment."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self, **options):
        options["extensions"] = [*options.get("extensions", ()), _Guards]
        super().__init__(**options)
        self.budget = Budget()
        del self.globals["lipsum"]  # lipsum(n) is n paragraphs of filler: a DoS, and no use to a prompt

    def compile_guarded(self, source: str):
        tree = _AddGuards(self.extensions[_Guards.identifier]).visit(self.parse(source))
        for name, func in list(self.filters.items()):  # filters added after __init__ are guarded too
            if not getattr(func, "budgeted", False):
                self.filters[name] = self._guard_filter(name, func)
        return self.from_string(tree)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's own signature
        budget = __self.budget
        budget.step()
        if isinstance(getattr(__obj, "__self__", None), _Guards):  # they check themselves
            return __context.call(__obj, *args, **kwargs)
        if not getattr(__obj, "budgeted", False):
            _check_counts(budget, (*args, *kwargs.values()))
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str) and __obj.__name__ == "join" and args:
            items = list(args[0])
            budget.expect(text_size(items) + len(target) * len(items), "a joined string")
            args = (items, *args[1:])
        else:
            budget.expect(_expected_size(getattr(__obj, "__name__", ""), target, args, kwargs) or 0, "a string")
        return budget.built(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator, left, right):
        budget = self.budget
        if operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple)):
            left, right = right, left
        if operator == "*" and isinstance(left, (str, list, tuple)) and isinstance(right, int):
            budget.expect(len(left) * right, "a repeated value")
        elif operator in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() * abs(right) if operator == "**" else left.bit_length() + right.bit_length()
            if bits > MAX_INT_BITS and abs(left) > 1:
                raise TemplateError(f"the chat template computes a {bits:,}-bit number; stopped")
        elif operator == "%" and isinstance(left, str):
            budget.expect(len(left) + format_widths(left, percent=True) + text_size(right), "a formatted string")
        return budget.built(super().call_binop(context, operator, left, right))

    def getitem(self, obj, argument):
        value = super().getitem(obj, argument)
        return self.budget.built(value) if isinstance(argument, slice) else value

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        def budgeted_format(*args, **kwargs):
            self.budget.expect(len(fmt) + format_widths(fmt, percent=False) + text_size((args, kwargs)),
                               "a formatted string")
            return wrapper(*args, **kwargs)

        budgeted_format.budgeted = True  # its arguments are values to print, not sizes
        return budgeted_format

    def unsafe_undefined(self, obj, attribute):
        # jinja2 returns an Undefined that only fails when used, and `{{ x.__class__ }}` prints "".
        # A template reaching for internals is hostile: stop it at the first attempt.
        raise TemplateError(f"the chat template tried to reach {attribute!r} of a {type(obj).__name__}; "
                            "the sandbox refused")

    def _guard_filter(self, name: str, func):
        skip = 1 if _PassArg.from_obj(func) is not None else 0  # context/environment come first

        @functools.wraps(func)
        def guarded(*args, **kwargs):
            budget = self.budget
            budget.step()
            value, rest = (args[skip], args[skip + 1:]) if len(args) > skip else (None, ())
            if isinstance(value, Iterator):  # size what a generator holds (it is bounded: loops are)
                value = budget.built(list(value))
                args = (*args[:skip], value, *rest)
            if name != "format":  # format's arguments are values to print, not sizes
                _check_counts(budget, (*rest, *kwargs.values()))
            budget.expect(_filter_result_size(self, name, value, rest, kwargs), f"the result of '{name}'")
            return budget.built(func(*args, **kwargs))

        guarded.budgeted = True
        return guarded


def _filter_result_size(env, name: str, value, rest: tuple, kwargs: dict) -> int:
    """What a filter will build, for the filters whose output can dwarf their input."""
    if name == "format":
        return len(str(value)) + format_widths(str(value), percent=True) + text_size((rest, kwargs))
    if name in ("string", "pprint", "tojson"):
        return text_size(value)
    if name == "join" and value is not None:
        attribute = rest[1] if len(rest) > 1 else kwargs.get("attribute")
        items = [make_attrgetter(env, attribute)(v) for v in value] if attribute is not None else value
        separator = str(rest[0] if rest else kwargs.get("d", ""))
        return text_size(items) + len(separator) * len(items)
    if name == "sum" and value is not None:
        start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
        # Summing strings or lists copies the running total at every step.
        return 0 if isinstance(start, (int, float)) else len(value) * text_size(value)
    return _expected_size(name, value, rest, kwargs) or 0
