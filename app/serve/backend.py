"""What the HTTP front (api.py) needs of whoever owns the engine: a Backend. The engine is not thread-safe
(its tokenizer and chat template neither), so every call that touches it runs on the owner's thread; the
front only submits work there and receives records back.

engine_loop.EngineLoop is the headless Backend (`glassbox serve`); the window's engine worker can be another,
so served requests show up in its panels. Both must keep these promises:
- run(fn) calls fn(engine) on the engine's thread between steps and resolves the Future with its result
  (or its exception);
- submit(request, listener) queues the request and resolves to its request id; listener(record) is then
  called on the engine's thread with each StepRecord and finally the RequestDone of that request, and
  must not block (the front hands records to its event loop);
- cancel(request_id) may be called from any thread, even after the request ended: the engine stops it at
  the next step, frees its KV blocks and sends its RequestDone (finish "cancelled").
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from engine.records import GenerationRequest, RequestDone, StepRecord

T = TypeVar("T")
Record = StepRecord | RequestDone
Listener = Callable[[Record], None]


@dataclass(frozen=True)
class ServedModel:
    """What /v1/models and request checks need, read once when serving starts."""

    id: str  # the name clients pass as `model`
    context: int  # tokens the model's context holds (prompt + completion)
    vocab: int  # token ids a completion prompt may hold are below this
    supports_tools: bool  # the chat template reads `tools`
    created: int = 0  # unix time the model was loaded


class Backend(Protocol):
    model: ServedModel

    def run(self, fn: Callable[..., T]) -> Future[T]: ...

    def submit(self, request: GenerationRequest, listener: Listener) -> Future[int]: ...

    def cancel(self, request_id: int) -> None: ...
