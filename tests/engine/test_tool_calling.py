"""Tool calling end to end on a tiny random model with a byte-level vocabulary and a handwritten
Hermes-style template that reads `tools`: offer the calculator, constrain and parse the call, run it,
hand the result back through the template, continue. References: jsonschema for the arguments, Python's
own arithmetic for the calculator, the template's text for what reached the model."""
import json

import jsonschema
import pytest

from engine.engine import Engine
from engine.records import GenerationDone, SamplingParams
from engine.text.tools import (CALCULATOR, Tool, ToolCall, calculate, call_grammar, call_schema, parse_tool_calls,
                          run_builtin, template_supports_tools, tool_call_params, tool_result_message)
from engine.text.tokenizer_gguf import byte_alphabet

SPECIALS = ["<|im_start|>", "<|im_end|>"]
TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools; answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{%- for c in m.tool_calls %}
<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
WEATHER = Tool("weather", "Today's weather in a city.", {
    "type": "object", "additionalProperties": False, "required": ["city", "unit"],
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}}})


def write_byte_tokenizer(directory) -> int:
    """A byte-level BPE without merges (one token per byte) plus ChatML specials, with TEMPLATE as its
    chat template: any text can be spelled, so JSON constraints work on a tiny random model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: b for b, c in byte_alphabet().items()} | {s: 256 + i for i, s in enumerate(SPECIALS)}
    tok = Tokenizer(models.BPE(vocab, [], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": TEMPLATE}))
    return len(vocab)


@pytest.fixture
def tool_engine(tmp_path):
    from tests.tiny_models import build_hf_model

    model = build_hf_model("qwen2", seed=3, vocab_size=258, max_position_embeddings=2048)
    model.save_pretrained(tmp_path)
    write_byte_tokenizer(tmp_path)
    return Engine.load(tmp_path)


def generate(engine, ids, params) -> GenerationDone:
    return next(x for x in engine.generate(ids, params) if isinstance(x, GenerationDone))


def test_calculator_round_trip_through_the_template(tool_engine):
    engine, tools = tool_engine, [CALCULATOR, WEATHER]
    assert template_supports_tools(engine.chat_template.source)
    messages = [{"role": "user", "content": "What is 17 * 23?"}]
    prompt = engine.tokenizer.decode(engine.chat_prompt_ids(messages, tools=[t.spec() for t in tools]))
    assert CALCULATOR.description in prompt and '"name": "weather"' in prompt  # offered through `tools`
    calls = []
    for temperature, seed in ((0.0, 0), (1.0, 1), (1.0, 2)):
        params = tool_call_params(SamplingParams(temperature=temperature, seed=seed, max_new_tokens=160), tools,
                                  tokenizer=engine.tokenizer)
        done = generate(engine, engine.chat_prompt_ids(messages, tools=[t.spec() for t in tools]), params)
        assert done.finish_reason == "eos", done.text  # the grammar ends after </tool_call>
        (call,) = parse_tool_calls(done.text, tools)
        jsonschema.validate({"name": call.name, "arguments": call.arguments}, call_schema(tools))
        calls.append(call)
    call = next((c for c in calls if c.name == "calculator"), None) or ToolCall("calculator", {"expression": "17 * 23"})
    result = run_builtin(call)
    expression = call.arguments["expression"]
    try:
        expected = eval(expression, {"__builtins__": {}})  # noqa: S307 - the schema's pattern admits arithmetic only
        assert float(result) == pytest.approx(expected)
    except ZeroDivisionError:
        assert result.startswith("error:")
    if any(c.name == "weather" for c in calls):
        assert run_builtin(next(c for c in calls if c.name == "weather")) is None  # the user answers that one
    messages += [call.message(), tool_result_message(call, result)]
    ids = engine.chat_prompt_ids(messages, tools=[t.spec() for t in tools])
    history = engine.tokenizer.decode(ids)
    assert f"<tool_response>\n{result}\n</tool_response>" in history
    assert json.dumps({"name": "calculator", "arguments": call.arguments}, ensure_ascii=False) in history
    answer = generate(engine, ids, SamplingParams(temperature=0, max_new_tokens=8))
    assert answer.prompt_tokens == len(ids) and len(answer.token_ids) > 0  # the chat goes on after the result


def test_optional_call_lets_the_model_answer_in_prose(tool_engine):
    engine = tool_engine
    grammar = call_grammar([CALCULATOR], required=False)
    ids = engine.chat_prompt_ids([{"role": "user", "content": "hi"}], tools=[CALCULATOR.spec()])
    for seed in range(3):
        params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=12, constraint_kind="grammar",
                                constraint=grammar)
        text = generate(engine, ids, params).text
        assert text.startswith("<tool_call>") or (text and not text.startswith("<")), text


def test_parse_calls_in_the_common_formats():
    block = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
    assert parse_tool_calls(block) == [ToolCall("calculator", {"expression": "1+1"})]
    assert parse_tool_calls(block + "\n" + block.replace("1+1", "2*3")) == [
        ToolCall("calculator", {"expression": "1+1"}), ToolCall("calculator", {"expression": "2*3"})]
    llama3 = '{"name": "weather", "parameters": {"city": "Oslo", "unit": "C"}}'
    assert parse_tool_calls(llama3, [WEATHER]) == [ToolCall("weather", {"city": "Oslo", "unit": "C"})]
    encoded = '<tool_call>{"name": "weather", "arguments": "{\\"city\\": \\"Rome\\", \\"unit\\": \\"F\\"}"}</tool_call>'
    assert parse_tool_calls(encoded)[0].arguments == {"city": "Rome", "unit": "F"}
    assert parse_tool_calls("no call here") == [] and parse_tool_calls("<tool_call>{oops</tool_call>") == []
    assert parse_tool_calls(block, [WEATHER]) == []  # unknown tool names are not calls


@pytest.mark.parametrize("expression, expected", [("12 * (3 + 4)", "84"), ("7 / 2", "3.5"), ("-3 % 5", "2"),
                                                  ("2 ** 10", "1024"), ("1.5 + 1.5", "3")])
def test_calculator_agrees_with_python(expression, expected):
    assert calculate(expression) == expected == str(eval(expression)).removesuffix(".0")  # noqa: S307


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "x + 1", "(1).real", "9 ** 9 ** 9",
                                        "1 / 0", "((99 ** 64) ** 64) ** 64", "[1, 2]", "1 +"])
def test_calculator_refuses_everything_but_bounded_arithmetic(expression):
    assert calculate(expression).startswith("error:")


def test_templates_without_tools_are_recognised():
    from engine.text.chat_template import CHATML

    assert not template_supports_tools(CHATML) and template_supports_tools(TEMPLATE)
