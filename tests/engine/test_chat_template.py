"""Chat templates: ours renders exactly what transformers renders (the default model's template and
one that uses most of jinja2), and hostile templates run nothing and fail fast with a TemplateError."""
import time

import pytest

from engine.text.chat_template import ChatTemplate
from engine.errors import TemplateError
from engine.loaders.gguf_file import read_metadata

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3? <b>bold</b> & 'quotes' — ünïcödé 🎉"},
]


@pytest.fixture(scope="module")
def default_template(default_gguf):
    return read_metadata(default_gguf)["tokenizer.chat_template"]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:2]], ids=["multi-turn", "no-system"])
def test_default_model_template_matches_transformers(default_template, hf_default_tokenizer, messages,
                                                     add_generation_prompt):
    ours = ChatTemplate(default_template).render(messages, add_generation_prompt=add_generation_prompt)
    assert ours == hf_default_tokenizer.apply_chat_template(messages, tokenize=False,
                                                            add_generation_prompt=add_generation_prompt)


# A tool-calling template in the style of current models, touching most of what templates use.
RICH = """
{%- macro render_args(args) -%}{% for k, v in args|dictsort %}{{ k }}={{ v|tojson }}{{ ', ' if not loop.last }}{% endfor %}{%- endmacro -%}
{%- set ns = namespace(last_user=-1, tools_seen=0) -%}
{%- for m in messages if m.role != 'system' %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor -%}
{{ bos_token }}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content | trim }}{% else %}You are helpful.{% endif %}
{% if tools %}
# Tools ({{ tools | length }})
{% for tool in tools %}{{ tool | tojson }}
{{ tool.function | tojson(indent=2, sort_keys=true) }}
{% endfor %}{% endif %}<|im_end|>
{% for message in messages if message.role != 'system' %}
{%- set header %}<|im_start|>{{ message.role }}{% endset -%}
{{ header }}
{% if message.tool_calls is defined %}{% generation %}{% for call in message.tool_calls -%}
<tool_call>{{ call.function.name }}({{ render_args(call.function.arguments) }})</tool_call>
{% endfor %}{% endgeneration %}{% elif message.role == 'tool' %}{{ '<tool_response>%s</tool_response>' % message.content }}
{% else %}{{ message.content[:200] ~ ('' if loop.index0 != ns.last_user else ' [last]') }}
{% endif %}<|im_end|>
{% endfor -%}
{{ '{0}/{1} users: {2}'.format(messages|selectattr('role', 'equalto', 'user')|list|length, messages|length,
   messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|map('upper')|join(' | ')) }}
{{ "%05.1f%%"|format(99.5) }} {{ 2 ** 8 }} {{ 'ab' * 3 }} {{ 7 % 3 }} {{ [1, 2] + [3] }} {{ dict(a=1, b=[2]) | tojson }}
{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}
{{ 'x\ny' | indent(2, first=true) }} {{ messages | map(attribute='role') | unique | sort | join(',') }}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <for> a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_CONVERSATION = CONVERSATION + [
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "content": "sunny, 21°C"},
    {"role": "user", "content": "Thanks!"},
]


def test_rich_template_matches_transformers(hf_default_tokenizer):
    tok = hf_default_tokenizer
    ours = ChatTemplate(RICH, bos_token=tok.bos_token, eos_token=tok.eos_token).render(TOOL_CONVERSATION, tools=TOOLS)
    reference = tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, chat_template=RICH, tokenize=False,
                                        add_generation_prompt=True)
    assert ours == reference
    assert "<tool_call>get_weather(city=\"Paris\", days=2)</tool_call>" in ours and "Thanks! [last]" in ours


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",  # plain jinja2 prints "" here; we refuse the attempt itself
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.__builtins__['__import__']('os').system('touch {marker}') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('{marker}', 'w') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ (messages|attr('__class__')).__mro__ }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{% set x = messages.append({'role': 'evil'}) %}{{ x }}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{{ dict.mro() }}",
    "{% include '{marker}' %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_raise_and_run_nothing(source, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateError):
        ChatTemplate(source.replace("{marker}", str(marker))).render(CONVERSATION)
    assert not marker.exists()


RUNAWAYS = {
    "nested range loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over a string": "{% set s = 'x' * 99999 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "slow work in a loop": "{% set s = 'x' * 999999 %}{% for i in range(99999) %}{% for j in range(9) %}"
                           "{{ s.count('y') }}{% endfor %}{% endfor %}",
    "huge repeat": "{{ 'x' * 10**9 }}",
    "huge power": "{{ 9 ** (9 ** 9) }}",
    "huge output": "{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}",
    "doubling join": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "captured output": "{% set x %}{% for i in range(99999) %}{{ 'x' * 999 }}{% endfor %}{% endset %}",
    "format width": "{{ '%0999999999d' % 1 }}{{ '{:>999999999}'.format(1) }}",
    "replace blow-up": "{% set s = 'x' * 99999 %}{{ s.replace('x', s) }}",
    "join of references": "{% set l = ['x' * 999999] %}{{ (l * 999999) | join }}",
    "print of references": "{% set l = ['x' * 999999] %}{{ l * 999 }}",
    "quadratic sum": "{{ ([[1]] * 999999) | sum(start=[]) }}",
    "center": "{{ 'x' | center(999999999) }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "lipsum": "{{ lipsum(999999) }}",
}


@pytest.mark.parametrize("source", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_runaway_templates_stop_quickly(source):
    start = time.perf_counter()
    with pytest.raises(TemplateError):
        ChatTemplate(source).render(CONVERSATION)
    assert time.perf_counter() - start < 5  # the budget allows 2 s of work


def test_budget_is_per_render(monkeypatch):
    """The step budget resets for every render. (The time limit is lifted here: this test is about
    steps, and ~600k steps take 1-3 s of CPU depending on the machine.)"""
    from engine.text import template_sandbox

    monkeypatch.setattr(template_sandbox, "MAX_SECONDS", 60.0)
    template = ChatTemplate("{% for i in range(99999) %}{% for j in range(6) %}{% endfor %}{% endfor %}ok")
    assert [template.render(CONVERSATION) for _ in range(2)] == ["ok"] * 2  # ~60% of the step budget each


def test_long_conversations_still_render():
    messages = [{"role": "user", "content": "word " * 100_000}] * 1 + CONVERSATION
    assert len(ChatTemplate.default().render(messages)) > 500_000


def test_errors_are_clear():
    with pytest.raises(TemplateError, match="syntax error on line 2"):
        ChatTemplate("ok\n{% if %}", path="model.gguf")
    with pytest.raises(TemplateError, match="refused the conversation: roles must alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}").render(CONVERSATION)
    with pytest.raises(TemplateError, match="UndefinedError: 'foo' is undefined"):
        ChatTemplate("{{ foo.bar }}").render(CONVERSATION)
    with pytest.raises(TemplateError, match="UndefinedError"):
        ChatTemplate("{{ messages[0].content.nope() }}").render(CONVERSATION)


def test_template_sees_plain_data_only():
    class Content(str):
        def delete(self):
            raise AssertionError("a template called a method of the caller's object")

    class Opaque:
        def __str__(self):
            return "opaque"

    rendered = ChatTemplate("{{ messages[0].content }} {{ messages[0].extra }} {{ flag }}").render(
        [{"role": "user", "content": Content("hi"), "extra": Opaque()}], flag=(1, 2))
    assert rendered == "hi opaque [1, 2]"
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages[0].content.delete() }}").render([{"role": "user", "content": Content("hi")}])


def test_chatml_fallback():
    text = ChatTemplate.default().render(CONVERSATION[1:2])
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
