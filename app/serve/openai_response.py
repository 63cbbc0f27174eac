"""Engine records turned into OpenAI answers: each choice's text (cut at a stop string, which the engine
leaves in), its logprobs, its finish reason, the usage, and the JSON of whole answers and stream chunks."""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from app.serve.openai_request import ParsedRequest
from app.serve.tool_calls import parse_calls
from engine.records import RequestDone, StepRecord

# The engine's reasons, in OpenAI's words: a full context is a length limit too.
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context_full": "length", "cancelled": "stop"}
LOWEST_LOGPROB = -9999.0  # OpenAI's stand-in for log(0), which JSON cannot carry


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else LOWEST_LOGPROB


def releasable(text: str, stops: tuple[str, ...], final: bool) -> str:
    """The part of `text` that may be shown: everything before a stop string, and while generating, not the
    tail that may be the start of one."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut >= 0:
        return text[:cut]
    if final or not stops:
        return text
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold]


@dataclass
class Choice:
    """One choice (sample) being built from its StepRecords."""

    index: int
    text: str = ""
    sent: int = 0  # characters of releasable text already streamed
    tokens: int = 0
    logprobs: list = field(default_factory=list)  # chat entries, or (token, logprob, {token: logprob}) for completions
    finish_reason: str | None = None

    def add(self, record: StepRecord, token_text: str | None, top: int, greedy: bool) -> None:
        self.text += record.text
        self.tokens += 1
        if token_text is None:
            return
        alternatives = record.top_before if greedy else record.top_after  # the distribution record.prob is of
        self.logprobs.append((token_text, logprob(record.prob), [(t.text, logprob(t.prob)) for t in alternatives[:top]]))

    def delta(self, stops: tuple[str, ...], final: bool) -> str:
        shown = releasable(self.text, stops, final)
        out, self.sent = shown[self.sent:], max(self.sent, len(shown))
        return out


def chat_logprobs(entries) -> dict:
    def item(token, lp):
        return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}
    return {"content": [item(t, lp) | {"top_logprobs": [item(a, b) for a, b in top]} for t, lp, top in entries],
            "refusal": None}


def completion_logprobs(entries, start: int = 0) -> dict:
    offsets, at = [], start
    for token, _, _ in entries:
        offsets.append(at)
        at += len(token)
    return {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [dict(top) for _, _, top in entries], "text_offset": offsets}


def usage(done: RequestDone | None, prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(c.tokens for c in choices)
    cached = done.cached_prompt_tokens if done is not None else 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class Answer:
    """The ids and envelope shared by an answer's chunks or its one body."""

    def __init__(self, request: ParsedRequest, model: str):
        self.request, self.model = request, model
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if request.chat else "text_completion"

    def envelope(self, chunk: bool) -> dict:
        kind = self.object + (".chunk" if chunk and self.request.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def finish(self, choice: Choice, done_reason: str) -> tuple[str | None, list[dict], str]:
        """(content, tool_calls, finish_reason) of a finished choice."""
        text = releasable(choice.text, self.request.params.stop, final=True)
        reason = FINISH.get(done_reason, "stop")
        if not self.request.chat or not self.request.tools or self.request.tool_choice == "none":
            return text, [], reason
        content, calls = parse_calls(text, self.request.tools)
        return (content, calls, "tool_calls") if calls else (text, [], reason)

    def body(self, choices: list[Choice], done: RequestDone) -> dict:
        """The whole non-streamed answer."""
        reasons = {r.index: r.finish_reason for r in done.results}
        out = []
        for c in choices:
            content, calls, reason = self.finish(c, reasons.get(c.index, "cancelled"))
            if self.request.chat:
                message = {"role": "assistant", "content": content, "refusal": None}
                if calls:
                    message["tool_calls"] = calls
                out.append({"index": c.index, "message": message, "finish_reason": reason,
                            "logprobs": chat_logprobs(c.logprobs) if self.request.logprobs else None})
            else:
                out.append({"index": c.index, "text": content, "finish_reason": reason,
                            "logprobs": completion_logprobs(c.logprobs) if self.request.logprobs else None})
        return self.envelope(False) | {"choices": out, "usage": usage(done, done.prompt_tokens, choices)}

    def chunk(self, index: int, delta: dict | str, finish_reason: str | None = None, logprobs=None) -> dict:
        """A streamed chunk with one choice: `delta` is the chat delta or the completion's new text."""
        choice = {"index": index, "finish_reason": finish_reason, "logprobs": logprobs}
        choice |= {"delta": delta} if self.request.chat else {"text": delta}
        body = self.envelope(True) | {"choices": [choice]}
        if self.request.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, choices: list[Choice], done: RequestDone) -> dict:
        return self.envelope(True) | {"choices": [], "usage": usage(done, done.prompt_tokens, choices)}
