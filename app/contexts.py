"""The token ids each recent request ran on, so an inspection of a selected token can be asked for
without the engine: the logit lens, an intervention and the sampler's penalties all need the context
the model saw before that token (its request's prompt, then the tokens generated before it).

GUI thread. Fed with each request's PromptRecord (from TurnStart) and its steps; the window asks for
one sample per request, so sample 0's tokens are the reply. Only the newest KEPT requests are held: every
prompt repeats the conversation before it, so keeping all of them would grow with the square of its
length, and a token clicked in an older turn is then inspected without what this cannot rebuild."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from engine.records import PromptRecord, StepRecord

KEPT = 8


@dataclass
class RequestContext:
    prompt_ids: tuple[int, ...]
    prompt_texts: tuple[str, ...]
    ids: list[int] = field(default_factory=list)  # generated (sample 0), in order
    texts: list[str] = field(default_factory=list)


class RequestContexts:
    def __init__(self, kept: int = KEPT):
        self.kept = kept
        self._requests: OrderedDict[int, RequestContext] = OrderedDict()

    def start(self, prompt: PromptRecord) -> None:
        self._requests[prompt.request_id] = RequestContext(tuple(prompt.token_ids), tuple(prompt.token_texts))
        while len(self._requests) > self.kept:
            self._requests.popitem(last=False)

    def add(self, records) -> None:
        for r in records:
            request = self._requests.get(r.request_id)
            if request is not None and r.seq_index == 0 and r.index == len(request.ids):
                request.ids.append(r.token_id)
                request.texts.append(r.text)

    def reset(self) -> None:
        """A new model: token ids mean nothing to it."""
        self._requests.clear()

    def before(self, record: StepRecord) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
        """The ids (and texts) the model had seen when it produced `record`: its prompt and the tokens
        generated before it. None when its request is no longer kept or it is another sample's."""
        request = self._requests.get(record.request_id)
        if request is None or record.seq_index != 0 or record.index > len(request.ids):
            return None
        return (request.prompt_ids + tuple(request.ids[:record.index]),
                request.prompt_texts + tuple(request.texts[:record.index]))

    def latest(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The newest request's whole sequence: its prompt (the conversation before it) and its reply."""
        if not self._requests:
            return (), ()
        request = next(reversed(self._requests.values()))
        return request.prompt_ids + tuple(request.ids), request.prompt_texts + tuple(request.texts)
