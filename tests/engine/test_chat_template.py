"""Chat templates: the default model's renders exactly as transformers renders it, and hostile
templates run nothing and fail fast with a TemplateError."""
import time

import pytest

from engine.chat_template import ChatTemplate
from engine.errors import TemplateError
from engine.loaders.gguf_file import read_metadata

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:2]], ids=["multi-turn", "no-system"])
def test_default_model_template_matches_transformers(default_gguf, hf_default_tokenizer, messages):
    meta = read_metadata(default_gguf)
    ours = ChatTemplate(meta["tokenizer.chat_template"]).render(messages, add_generation_prompt=True)
    reference = hf_default_tokenizer
    assert ours == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.__builtins__['__import__']('os').system('touch {marker}') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set x = messages.append({'role': 'evil'}) %}{{ x }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_raise_and_run_nothing(source, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateError):
        ChatTemplate(source.replace("{marker}", str(marker))).render(CONVERSATION)
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
])
def test_runaway_templates_are_bounded(source):
    start = time.perf_counter()
    with pytest.raises(TemplateError):
        ChatTemplate(source).render(CONVERSATION)
    assert time.perf_counter() - start < 10  # a generous bound: it must stop, not be fast


def test_syntax_errors_and_template_exceptions_are_clear():
    with pytest.raises(TemplateError, match="syntax error on line 1"):
        ChatTemplate("{% if %}")
    with pytest.raises(TemplateError, match="refused the conversation: roles must alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}").render(CONVERSATION)


def test_chatml_fallback():
    text = ChatTemplate.default().render(CONVERSATION[1:2])
    assert text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
