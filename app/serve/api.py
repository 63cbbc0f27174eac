"""The OpenAI-compatible HTTP API over a Backend: GET /v1/models, POST /v1/chat/completions and /v1/completions,
whole or streamed as server-sent events. Checks come first (API key, body size, JSON, model, limits, prompt
length), each failing with an OpenAI error object; then the request goes to the engine and its records come
back as the answer. A client that disconnects has its request cancelled, which frees its KV blocks."""
from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from app.serve.backend import Backend
from app.serve.errors import ApiError, bad_request, error_body
from app.serve.generation import Generation
from app.serve.openai_request import Limits, ParsedRequest, max_new_tokens, parse
from app.serve.openai_response import Answer, Choice, chat_logprobs, completion_logprobs
from engine.errors import EngineError
from engine.records import GenerationRequest, InstrumentOptions, RequestDone


def create_app(backend: Backend, limits: Limits = Limits(), api_key: str | None = None) -> Starlette:
    served = backend.model

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    async def models(request: Request):
        authorize(request)
        return JSONResponse({"object": "list", "data": [_model_entry(served)]})

    async def model(request: Request):
        authorize(request)
        if request.path_params["name"] != served.id:
            raise _unknown_model(request.path_params["name"])
        return JSONResponse(_model_entry(served))

    async def chat(request: Request):
        return await complete(request, chat=True)

    async def completions(request: Request):
        return await complete(request, chat=False)

    async def complete(request: Request, chat: bool):
        authorize(request)
        parsed = parse(await _read_json(request, limits.max_body_bytes), chat, limits)
        if parsed.model != served.id:
            raise _unknown_model(parsed.model)
        ids = await _prompt_ids(backend, parsed)
        if len(ids) >= served.context:
            raise bad_request(f"the prompt has {len(ids)} tokens; this model's context holds {served.context} "
                              f"(prompt and completion together): shorten the prompt", "messages" if chat else "prompt",
                              "context_length_exceeded")
        if parsed.max_tokens and len(ids) + parsed.max_tokens > served.context:
            raise bad_request(f"this model's context holds {served.context} tokens; you asked for "
                              f"{len(ids) + parsed.max_tokens} ({len(ids)} in the prompt, {parsed.max_tokens} to "
                              f"generate): lower max_tokens or shorten the prompt", "max_tokens",
                              "context_length_exceeded")
        params = replace(parsed.params, max_new_tokens=max_new_tokens(parsed, len(ids), served.context, limits))
        generation = Generation(backend, GenerationRequest(
            tuple(ids), params, n=parsed.n, instrument=InstrumentOptions(top_n=parsed.top_logprobs)))
        await generation.start()
        answer = Answer(parsed, served.id)
        if parsed.stream:
            return StreamingResponse(_events(backend, generation, answer), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await _whole(backend, generation, answer, request))

    async def api_error(request: Request, e: ApiError):
        return e.response()

    async def http_error(request: Request, e: HTTPException):
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    routes = [Route("/v1/models", models, methods=["GET"]), Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error})


def _model_entry(served) -> dict:
    return {"id": served.id, "object": "model", "created": served.created, "owned_by": "glassbox",
            "context_length": served.context}


def _unknown_model(name: str) -> ApiError:
    return ApiError(404, f"the model `{name}` does not exist; this server serves one model: see GET /v1/models",
                    "model", "model_not_found")


async def _read_json(request: Request, max_bytes: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body is over this server's limit of {max_bytes} bytes")
    body = bytearray()
    async for piece in request.stream():  # counted as it comes: a missing or false Content-Length changes nothing
        body += piece
        if len(body) > max_bytes:
            raise ApiError(413, f"the request body is over this server's limit of {max_bytes} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


async def _prompt_ids(backend: Backend, parsed: ParsedRequest) -> list[int]:
    def render(engine) -> list[int]:
        if parsed.chat:
            offered = list(parsed.tools) if parsed.tool_choice != "none" else None
            return engine.chat_prompt_ids(list(parsed.messages), tools=offered)
        return list(parsed.prompt) if isinstance(parsed.prompt, tuple) else engine.prompt_ids(parsed.prompt)
    try:
        ids = await asyncio.wrap_future(backend.run(render))
    except (EngineError, ValueError, TypeError) as e:  # the chat template refused these messages
        raise bad_request(f"the prompt could not be built: {e}", "messages" if parsed.chat else "prompt") from None
    if not parsed.chat and isinstance(parsed.prompt, tuple) and not all(0 <= i < backend.model.vocab for i in ids):
        raise bad_request(f"prompt token ids must be in [0, {backend.model.vocab})", "prompt")
    return ids


async def _token_texts(backend: Backend, ids: list[int]) -> tuple[str, ...]:
    return await asyncio.wrap_future(backend.run(lambda engine: engine.token_texts(ids)))


def _failure(done: RequestDone, generated: bool) -> ApiError:
    """A request the engine ended with an error: one that failed before its first token (a constraint it
    cannot satisfy, no room in the KV cache) was a bad request; later, the server failed it."""
    return ApiError(500 if generated else 400, done.error, code="generation_failed")


async def _whole(backend: Backend, generation: Generation, answer: Answer, request: Request) -> dict:
    parsed = answer.request
    choices = [Choice(i) for i in range(parsed.n)]
    records = generation.records()
    try:
        while True:
            next_record = asyncio.ensure_future(anext(records))
            while not next_record.done():  # a client that hangs up waiting gets its request cancelled
                await asyncio.wait([next_record], timeout=0.5)
                if not next_record.done() and await request.is_disconnected():
                    next_record.cancel()
                    generation.cancel()
                    raise ApiError(499, "the client went away")
            record = next_record.result()
            if isinstance(record, RequestDone):
                break
            text = (await _token_texts(backend, [record.token_id]))[0] if parsed.logprobs else None
            choices[record.seq_index].add(record, text, parsed.top_logprobs, parsed.params.greedy)
    finally:
        await records.aclose()
    if record.error:
        raise _failure(record, any(c.tokens for c in choices))
    return answer.body(choices, record)


async def _events(backend: Backend, generation: Generation, answer: Answer):
    """Server-sent events: the chunks as tokens come, then the finish per choice, the usage if asked, [DONE].
    With tools offered the text is held to the end, where it is either content or tool calls."""
    parsed = answer.request
    choices = [Choice(i) for i in range(parsed.n)]
    hold = parsed.chat and bool(parsed.tools) and parsed.tool_choice != "none"
    try:
        async for chunk in _chunks(backend, generation, answer, choices, hold):
            yield chunk
    finally:  # Starlette cancels this task when the client disconnects: the request stops, its blocks are freed
        generation.cancel()


async def _chunks(backend: Backend, generation: Generation, answer: Answer, choices: list[Choice], hold: bool):
    parsed = answer.request
    if parsed.chat:
        for c in choices:
            yield _sse(answer.chunk(c.index, {"role": "assistant", "content": ""}))
    async for record in generation.records():
        if isinstance(record, RequestDone):
            break
        choice = choices[record.seq_index]
        seen = len(choice.logprobs)
        text = (await _token_texts(backend, [record.token_id]))[0] if parsed.logprobs else None
        choice.add(record, text, parsed.top_logprobs, parsed.params.greedy)
        delta = "" if hold else choice.delta(parsed.params.stop, final=False)
        if delta or (parsed.logprobs and not hold):
            yield _sse(answer.chunk(choice.index, {"content": delta} if parsed.chat else delta,
                                    logprobs=_logprobs(parsed, choice.logprobs[seen:])))
    if record.error:
        yield _sse(error_body(500, record.error, code="generation_failed"))
        return
    reasons = {r.index: r.finish_reason for r in record.results}
    for c in choices:
        content, calls, reason = answer.finish(c, reasons.get(c.index, "cancelled"))
        if calls:
            delta = {"tool_calls": [call | {"index": i} for i, call in enumerate(calls)]}
        else:
            rest = content[c.sent:] if not hold else content
            delta = ({"content": rest} if rest else {}) if parsed.chat else rest
        logprobs = _logprobs(parsed, c.logprobs) if hold and parsed.logprobs else None
        yield _sse(answer.chunk(c.index, delta, reason, logprobs))
    if parsed.include_usage:
        yield _sse(answer.usage_chunk(choices, record))
    yield "data: [DONE]\n\n"


def _logprobs(parsed: ParsedRequest, entries):
    if not parsed.logprobs:
        return None
    return chat_logprobs(entries) if parsed.chat else completion_logprobs(entries)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
