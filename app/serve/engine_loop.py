"""The headless Backend (backend.py): one thread owns an Engine and steps it while any request is in flight.
Every running request advances in the same step (the runner batches all running sequences: continuous
batching), so clients that arrive while others generate join the next step instead of waiting their turn.
Work from other threads (text helpers, submissions, cancels) comes in through one queue and runs between steps.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

from app.serve.backend import Listener, ServedModel
from engine.engine import Engine
from engine.records import GenerationRequest, LoadOptions, RequestDone


class EngineLoop:
    def __init__(self, make_engine: Callable[[], Engine]):
        """Start the thread and build the engine on it with `make_engine` (Engine.load sets its CPU threads
        on the thread that calls it); returns once it is loaded, re-raising what loading raised."""
        self._inbox: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._listeners: dict[int, Listener] = {}
        loaded: Future = Future()
        self._thread = threading.Thread(target=self._loop, args=(make_engine, loaded), name="glassbox-serve-engine",
                                        daemon=True)
        self._thread.start()
        self.engine: Engine = loaded.result()
        facts = self.engine.facts()
        self.model = ServedModel(facts.name, facts.context, facts.vocab, facts.supports_tools, int(time.time()))

    @classmethod
    def load(cls, path: str | None = None, options: LoadOptions | None = None) -> "EngineLoop":
        return cls(lambda: Engine.load(path, options))

    # -- the Backend protocol (any thread) -------------------------------------------------------
    def run(self, fn: Callable[[Engine], object]) -> Future:
        future: Future = Future()

        def job():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine))
                except BaseException as e:  # handed to the caller, who decides
                    future.set_exception(e)
        self._inbox.put(job)
        return future

    def submit(self, request: GenerationRequest, listener: Listener) -> Future:
        def start(engine: Engine) -> int:
            rid = engine.submit(request)
            self._listeners[rid] = listener
            return rid
        return self.run(start)

    def cancel(self, request_id: int) -> None:
        self.run(lambda engine: engine.cancel(request_id))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after cancelling what is in flight (their listeners get their RequestDone)."""
        for rid in list(self._listeners):
            self.cancel(rid)
        self._inbox.put(None)
        self._thread.join(timeout)

    # -- the engine's thread -----------------------------------------------------------------------
    def _loop(self, make_engine: Callable[[], Engine], loaded: Future) -> None:
        try:
            self.engine = make_engine()
        except BaseException as e:
            loaded.set_exception(e)
            return
        loaded.set_result(self.engine)
        while True:
            # Idle: sleep until work arrives. Busy: take what is queued, then step.
            jobs = [self._inbox.get()] if not self.engine.has_work() else []
            while True:
                try:
                    jobs.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for job in jobs:
                if job is None:
                    self._drain()
                    return
                job()
            if self.engine.has_work():
                self._step()

    def _step(self) -> None:
        try:
            records = self.engine.step()
        except Exception as e:  # a bug or a device error: end every request with it rather than hang them
            for rid in list(self._listeners):
                self.engine.cancel(rid)
                self._deliver(RequestDone(rid, (), 0, 0, 0.0, 0.0, error=f"the engine failed: {e}"))
            return
        for record in records:
            self._deliver(record)

    def _deliver(self, record) -> None:
        listener = self._listeners.get(record.request_id)
        if isinstance(record, RequestDone):
            self._listeners.pop(record.request_id, None)
        if listener is not None:
            listener(record)

    def _drain(self) -> None:
        """Closing: step until the cancelled requests have said they are done (their blocks freed)."""
        while self.engine.has_work():
            self._step()
