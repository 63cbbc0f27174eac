"""The server under load and misuse: a tool call round trip, 8 concurrent streams, a client that hangs up,
the errors OpenAI clients expect, an API key, and the refusal to listen beyond this machine by default."""
from __future__ import annotations

import json
import threading

import urllib.error
import urllib.request
import jsonschema
import openai
import pytest

from app.serve.api import create_app
from app.serve.cli import check_host, is_loopback
from app.serve.cli import main as serve_main
from tests.serve.conftest import LIMITS, ServerThread, blocks_in_use, wait_idle

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Today's weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}}}}}


def raw(url: str, body: bytes | None = None) -> tuple[int, dict]:
    """A request with no client library in the way: (status, JSON body)."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_tool_call_round_trip(client, engine_loop):
    question = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=engine_loop.model.id, messages=question, tools=[WEATHER],
                                           tool_choice="required", max_tokens=120, seed=5)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    history = question + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    second = client.chat.completions.create(model=engine_loop.model.id, messages=history, tools=[WEATHER],
                                            max_tokens=10, seed=5)
    # The result reached the model through its template: the prompt is exactly the template's rendering.
    template_history = question + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": call.id, "type": "function", "function": {
            "name": "weather", "arguments": json.loads(call.function.arguments)}}]},
        {"role": "tool", "name": "weather", "tool_call_id": call.id, "content": "18 C, sunny"}]
    ids = engine_loop.run(lambda e: e.chat_prompt_ids(template_history, tools=[WEATHER])).result()
    text = engine_loop.run(lambda e: e.decode(ids)).result()
    assert "<tool_response>\n18 C, sunny" in text and second.usage.prompt_tokens == len(ids)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_eight_concurrent_streams_all_answered_and_no_block_left(server, engine_loop):
    results, errors = {}, []
    forwards_before = engine_loop.run(lambda e: e.counters[1]).result()

    def ask(i):
        try:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
            stream = client.chat.completions.create(
                model=engine_loop.model.id, messages=[{"role": "user", "content": f"client {i} says hi"}],
                max_tokens=24, seed=i, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            chunks = list(stream)
            results[i] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage)
        except Exception as e:  # reported below, with the others
            errors.append(e)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and sorted(results) == list(range(8))
    assert all(usage.completion_tokens == 24 for _, usage in results.values())
    assert wait_idle(engine_loop) == 0
    forwards = engine_loop.run(lambda e: e.counters[1]).result() - forwards_before
    print(f"8 clients x 24 tokens in {forwards} forward passes")  # < 192 when requests shared steps


def test_disconnect_mid_stream_cancels_and_frees_blocks(server, engine_loop):
    done = []
    original = engine_loop.submit

    def spying_submit(request, listener):  # see how the request ended
        return original(request, lambda r: (done.append(r) if hasattr(r, "results") else None, listener(r)))
    engine_loop.submit = spying_submit
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
        stream = client.completions.create(model=engine_loop.model.id, prompt="Tell a long story", max_tokens=1000,
                                           stream=True, extra_body={"ignore_eos": True})
        for _, _ in zip(range(3), stream):
            pass
        assert blocks_in_use(engine_loop) > 0
        stream.close()
        assert wait_idle(engine_loop) == 0
    finally:
        del engine_loop.submit
    (end,) = done
    assert end.results[0].finish_reason == "cancelled" and len(end.results[0].token_ids) < 1000


def test_errors_are_openai_error_objects(server, client, engine_loop):
    status, body = raw(f"{server.url}/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "JSON" in body["error"]["message"]
    assert raw(f"{server.url}/chat/completions", b"[1, 2]")[0] == 400
    status, body = raw(f"{server.url}/completions", b" " * (LIMITS.max_body_bytes + 1))
    assert status == 413 and "limit" in body["error"]["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=engine_loop.model.id, prompt="x" * 3000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and "context holds 2048" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=engine_loop.model.id, prompt="hi", max_tokens=LIMITS.max_tokens + 1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=engine_loop.model.id, messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=engine_loop.model.id, prompt="hi", temperature=-1)
    assert wait_idle(engine_loop) == 0


def test_api_key_is_required_when_set(engine_loop):
    keyed = ServerThread(create_app(engine_loop, LIMITS, api_key="s3cret"))
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url, api_key="wrong", max_retries=0).models.list()
        assert raw(f"{keyed.url}/models")[0] == 401
        assert openai.OpenAI(base_url=keyed.url, api_key="s3cret", max_retries=0).models.list().data
    finally:
        keyed.stop()


def test_non_loopback_bind_is_refused_without_allow_remote(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    with pytest.raises(SystemExit) as e:
        serve_main(["--host", "0.0.0.0"])  # refused before any model is loaded
    assert e.value.code == 2 and "--allow-remote" in capsys.readouterr().err
    assert check_host("0.0.0.0", allow_remote=True) is None
    assert "warning" in capsys.readouterr().err

    from app.__main__ import main as glassbox_main

    with pytest.raises(SystemExit):
        glassbox_main(["serve", "--host", "10.1.2.3"])
