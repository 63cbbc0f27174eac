"""Chat templates are code from strangers (issue 10): server-side-template-injection payloads of the
kind reported against llama-cpp-python in 2024 (a GGUF whose tokenizer.chat_template escapes jinja2
and runs a shell command) must run nothing, read nothing and end in a clear TemplateError; templates
that loop or print without end are stopped. Each test checks the side effect itself: the marker file
a payload tries to create does not exist, and no line of /etc/passwd appears anywhere."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.text.chat_template import ChatTemplate
from engine.errors import TemplateError

CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
PASSWD = Path("/etc/passwd")
SECRET = PASSWD.read_text().splitlines()[0] if PASSWD.is_file() else "root:x:0:0"

# {cmd} runs `touch {marker}`; {read} names the file to read. Most are the published SSTI chains
# (class hierarchy walks, the globals of jinja's own helpers, format-string attribute access,
# string-encoded attribute names, loaders), retargeted at a marker file.
RUN = [
    # CVE-2024-34359 (llama-cpp-python): the payload shipped in a GGUF's chat template
    "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
    "{{ x()._module.__builtins__['__import__']('os').popen('{cmd}') }}{% endif %}{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('{cmd}') }}",
    "{{ namespace.__init__.__globals__.__builtins__['__import__']('os').system('{cmd}') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('{cmd}') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('{cmd}') }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('{cmd}') }}",
    "{{ strftime_now.__globals__['__builtins__']['__import__']('os').system('{cmd}') }}",
    "{{ range.__globals__ }}",
    "{{ dict.__call__.__globals__ }}",
    "{{ cycler|attr('__init__')|attr('__globals__') }}",
    "{{ cycler|attr('\\x5f\\x5finit\\x5f\\x5f') }}",  # the name spelled with escapes
    "{{ cycler['__init__']['__globals__'] }}",
    "{{ (messages|attr('__class__')).__mro__ }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ '%s'|format(cycler.__init__) }}",
    "{% set ns = namespace() %}{{ ns.__init__.__globals__ }}",
    "{% set ns = namespace(_x=1) %}",
    "{% set x = messages.append({'role': 'evil'}) %}{{ x }}",
    "{% set m = messages[0] %}{% set x = m.update({'content': 'evil'}) %}{{ x }}",
    "{{ lipsum.__globals__['os'].popen('{cmd}') }}",
]
READ = [
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['open']('{read}').read() }}{% endif %}{% endfor %}",
    "{{ cycler.__init__.__globals__.__builtins__.open('{read}').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('cat {read}').read() }}",
    "{% include '{read}' %}",
    "{% import '{read}' as x %}{{ x }}",
    "{% extends '{read}' %}",
    "{% from '{read}' import x %}{{ x }}",
]


def render(source: str, marker: Path) -> None:
    source = source.replace("{cmd}", f"touch {marker}").replace("{read}", str(PASSWD))
    try:
        text = ChatTemplate(source, path="hostile.gguf").render(CONVERSATION)
    except TemplateError as e:
        assert SECRET not in str(e)
        assert "hostile.gguf" in str(e) or "chat template" in str(e)  # clear: names what failed
        return
    raise AssertionError(f"the payload rendered instead of being refused: {text[:200]!r}")


@pytest.mark.parametrize("source", RUN)
def test_command_payloads_run_nothing(source, tmp_path):
    marker = tmp_path / "pwned"
    render(source, marker)
    assert not marker.exists()


@pytest.mark.parametrize("source", READ)
def test_file_read_payloads_read_nothing(source, tmp_path):
    render(source, tmp_path / "pwned")


def test_payloads_in_messages_are_text(tmp_path):
    """A user who types a payload gets it back as text: the template's data is never template code."""
    marker = tmp_path / "pwned"
    payload = f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}} {{% include '/etc/passwd' %}}"
    text = ChatTemplate.default().render([{"role": "user", "content": payload}])
    assert payload in text and SECRET not in text
    assert not marker.exists()


def test_gguf_shipped_payload_end_to_end(tmp_path):
    """The 2024 exploit's shape: the payload arrives in a model file's tokenizer.chat_template. Loading the
    model works (the template only runs at render time); rendering refuses and runs nothing."""
    from engine.engine import Engine
    from tests.engine.test_gguf_loader import write_tiny

    marker = tmp_path / "pwned"
    payload = RUN[0].replace("{cmd}", f"touch {marker}")
    path = tmp_path / "hostile.gguf"
    write_tiny(path, dim=32, hidden=32, vocab=32, n_layers=1,
               kv={"tokenizer.ggml.model": "gpt2", "tokenizer.chat_template": payload})
    engine = Engine.load(path)
    with pytest.raises(TemplateError, match="sandbox|tried to reach"):
        engine.chat_prompt_ids(CONVERSATION)
    assert not marker.exists()


RUNAWAYS = {
    "range past the sandbox's limit": "{% for i in range(10**9) %}{% endfor %}",
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{{ '' }}{% endfor %}{% endfor %}",
    "loop over a long string": "{% for c in 'x' * 999999 %}{% for d in 'yy' %}{{ d }}{% endfor %}{% endfor %}",
    "string doubling": "{% set ns = namespace(s='ab') %}{% for i in range(80) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "list doubling": "{% set ns = namespace(l=[1]) %}{% for i in range(80) %}{% set ns.l = ns.l + ns.l %}"
                     "{% endfor %}{{ ns.l|length }}",
    "huge repeat": "{{ 'A' * 2**40 }}",
    "huge output by loop": "{% for i in range(99999) %}{{ 'x' * 999 }}{% endfor %}",
    "mutual recursion": "{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(1) }}",
    "exponent": "{{ (2 ** 64) ** (2 ** 20) }}",
    "format padding": "{{ '%999999999s'|format('x') }}",
    "wordwrap blow-up": "{{ ('a ' * 400000)|wordwrap(1, wrapstring='x' * 1000) }}",
    "indent blow-up": "{{ ('\\n' * 400000)|indent(999) }}",
    "join of a huge generator": "{{ range(99999)|map('string')|map('center', 99)|join }}",
}


@pytest.mark.parametrize("source", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_runaway_templates_are_bounded(source):
    start = time.perf_counter()
    with pytest.raises(TemplateError):
        ChatTemplate(source).render(CONVERSATION)
    assert time.perf_counter() - start < 10  # the budget is 2 s of work; 10 s only catches a hang


def test_engine_stays_usable_after_a_refused_template(tmp_path):
    """A refused render leaves the template (and its budget) ready for the next, honest conversation."""
    template = ChatTemplate("{% if messages[0].content == 'evil' %}{{ cycler.__init__ }}{% endif %}"
                            "{{ messages[-1].content }}")
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "evil"}])
    assert template.render([{"role": "user", "content": "fine"}]) == "fine"
