"""The built-in chat templates (ChatML, Llama 3, Gemma, none) render each format as documented and as
transformers renders the same source; a template override goes through the same sandbox (a payload in it
runs nothing); plain completion has no template tokens."""
import json

import pytest

from engine.engine import Engine
from engine.errors import TemplateError
from engine.records import LoadOptions
from engine.text.builtin_templates import BUILTIN_TEMPLATES, completion_text
from engine.text.chat_template import ChatTemplate

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]

# Each format as its model card documents it, for CONVERSATION with a generation prompt (BOS "<s>").
EXPECTED = {
    "ChatML": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n",
    "Llama 3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
    # no system role: it opens the first user turn
    "Gemma": "<s><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4.<end_of_turn>\n"
             "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n",
    "none": "What is 2+2?4.And 3+3?",
}


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_render_the_documented_format(name):
    assert ChatTemplate(BUILTIN_TEMPLATES[name], bos_token="<s>").render(CONVERSATION) == EXPECTED[name]


@pytest.mark.parametrize("messages", [CONVERSATION, CONVERSATION[1:], CONVERSATION[:1]], ids=["system", "no-system",
                                                                                              "system-only"])
@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_render_as_transformers_does(name, messages, hf_default_tokenizer):
    tok = hf_default_tokenizer
    ours = ChatTemplate(BUILTIN_TEMPLATES[name], tok.bos_token, tok.eos_token).render(messages)
    assert ours == tok.apply_chat_template(messages, chat_template=BUILTIN_TEMPLATES[name], tokenize=False,
                                           add_generation_prompt=True)


def test_none_template_is_the_completion_text():
    assert ChatTemplate(BUILTIN_TEMPLATES["none"]).render(CONVERSATION) == completion_text(CONVERSATION)


@pytest.fixture
def tiny_engine(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    return Engine.load(directory, LoadOptions(device="cpu"))


def test_a_template_override_is_rendered_and_tokenized(tiny_engine):
    messages = [{"role": "user", "content": "t1 t2"}]
    override = "{% for m in messages %}t5 {{ m.content }} t6{% endfor %}{% if add_generation_prompt %} t7{% endif %}"
    assert tiny_engine.chat_prompt_ids(messages, template=override) == [5, 1, 2, 6, 7]
    assert tiny_engine.chat_prompt_ids(messages) == tiny_engine.chat_prompt_ids(messages, template=None)


PAYLOADS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.__builtins__['__import__']('os').system('touch {marker}') }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('{marker}', 'w') }}",
    "{% include '{marker}' %}",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_override_with_a_payload_runs_nothing_and_says_why(tiny_engine, payload, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateError, match="chat template"):
        tiny_engine.chat_prompt_ids(CONVERSATION, template=payload.replace("{marker}", str(marker)))
    assert not marker.exists()


def test_an_override_with_a_syntax_error_says_where(tiny_engine):
    with pytest.raises(TemplateError, match="syntax error on line 2"):
        tiny_engine.chat_prompt_ids(CONVERSATION, template="ok\n{% for %}")


def test_completion_ids_are_the_texts_own_tokens(tiny_engine):
    text = completion_text([{"role": "system", "content": "t9"}, {"role": "user", "content": "t1 t2"},
                            {"role": "assistant", "content": " t3"}])
    assert text == "t1 t2 t3"
    ids = tiny_engine.completion_prompt_ids(text)
    bos = [tiny_engine.tokenizer.bos_id] if tiny_engine.tokenizer.add_bos and tiny_engine.tokenizer.bos_id is not None \
        else []
    assert ids == bos + tiny_engine.tokenizer.encode(text) == bos + [1, 2, 3]


def test_template_source_is_the_models_own_or_says_there_is_none(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    bare = Engine.load(directory, LoadOptions(device="cpu"))
    note = bare.template_source()
    assert "ships no chat template" in note
    assert ChatTemplate(note).render(CONVERSATION) == ChatTemplate.default().render(CONVERSATION)
    own = "{% for m in messages %}{{ m.content }}{% endfor %}"
    config = json.loads((directory / "tokenizer_config.json").read_text()) | {"chat_template": own}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert Engine.load(directory, LoadOptions(device="cpu")).template_source() == own
    assert set(Engine.builtin_templates()) == {"ChatML", "Llama 3", "Gemma", "none"}
