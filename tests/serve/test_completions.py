"""The server through the real `openai` client: models, chat and completions whole and streamed, logprobs
against the engine's own StepRecords for the same request, and JSON-schema output that validates."""
from __future__ import annotations

import json
import math

import jsonschema
import pytest

from engine.engine import Engine
from engine.records import GenerationRequest, InstrumentOptions, SamplingParams, StepRecord
from tests.serve.conftest import wait_idle

HELLO = [{"role": "user", "content": "Hello there"}]


def test_models_lists_the_loaded_model(client, engine_loop):
    (model,) = client.models.list().data
    assert model.id == engine_loop.model.id
    assert client.models.retrieve(model.id).id == model.id


def test_chat_whole_and_streamed_say_the_same(client, engine_loop):
    kwargs = dict(model=engine_loop.model.id, messages=HELLO, temperature=0, max_tokens=12)
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens either way
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert wait_idle(engine_loop) == 0


def test_completion_with_stop_string_and_n(client, engine_loop):
    free = client.completions.create(model=engine_loop.model.id, prompt="abc", temperature=0, max_tokens=20,
                                     extra_body={"ignore_eos": True})
    text = free.choices[0].text
    assert len(free.choices) == 1 and free.usage.completion_tokens == 20
    stop = text[5:7]
    cut = client.completions.create(model=engine_loop.model.id, prompt="abc", temperature=0, max_tokens=20,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    several = client.completions.create(model=engine_loop.model.id, prompt="abc", n=3, seed=7, max_tokens=6,
                                        temperature=1.0, extra_body={"top_k": 20, "min_p": 0.01})
    assert sorted(c.index for c in several.choices) == [0, 1, 2]


def engine_records(model_dir, ids, params, top_n) -> list[StepRecord]:
    """The same request through a separate Engine: its own StepRecords."""
    engine = Engine.load(model_dir)
    request = GenerationRequest(tuple(ids), params, instrument=InstrumentOptions(top_n=top_n))
    return [r for r in engine.stream(request) if isinstance(r, StepRecord)]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_are_the_engines_own(client, engine_loop, tiny_model_dir, temperature):
    answer = client.chat.completions.create(model=engine_loop.model.id, messages=HELLO, temperature=temperature,
                                            seed=11, max_tokens=8, logprobs=True, top_logprobs=3,
                                            extra_body={"ignore_eos": True})
    served = answer.choices[0].logprobs.content
    ids = engine_loop.run(lambda e: e.chat_prompt_ids(HELLO)).result()
    params = SamplingParams(temperature=temperature, top_p=1.0, seed=11, max_new_tokens=8, ignore_eos=True)
    records = engine_records(tiny_model_dir, ids, params, top_n=3)
    assert len(served) == len(records) == 8
    for entry, record in zip(served, records):
        assert entry.logprob == pytest.approx(math.log(record.prob), abs=1e-5)
        top = record.top_before if temperature == 0 else record.top_after
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([math.log(t.prob) for t in top[:3]], abs=1e-5)
        assert [t.token for t in entry.top_logprobs] == [t.text for t in top[:3]]


def test_streamed_completion_logprobs(client, engine_loop):
    chunks = list(client.completions.create(model=engine_loop.model.id, prompt="abc", temperature=0, max_tokens=5,
                                            logprobs=2, stream=True, extra_body={"ignore_eos": True}))
    tokens = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert len(tokens) == 5 and all(lp <= 0 for lp in tokens)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0,
                                                                          "maximum": 120}}}


def test_json_schema_output_validates(client, engine_loop):
    answer = client.chat.completions.create(
        model=engine_loop.model.id, messages=[{"role": "user", "content": "A person, as JSON"}], max_tokens=200,
        seed=1, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)
    plain = client.chat.completions.create(model=engine_loop.model.id, messages=HELLO, max_tokens=200, seed=2,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(plain.choices[0].message.content), dict)
