"""One served request as the event loop sees it: submitted to the Backend, its records arriving on an
asyncio queue (the engine's thread hands them over with call_soon_threadsafe), cancelled when its client
goes away."""
from __future__ import annotations

import asyncio

from app.serve.backend import Backend
from engine.records import GenerationRequest, RequestDone


class Generation:
    def __init__(self, backend: Backend, request: GenerationRequest):
        self.backend, self.request = backend, request
        self.id: int | None = None
        self.done: RequestDone | None = None
        self._queue: asyncio.Queue = asyncio.Queue()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def listener(record):  # on the engine's thread: never blocks
            loop.call_soon_threadsafe(self._queue.put_nowait, record)
        self.id = await asyncio.wrap_future(self.backend.submit(self.request, listener))

    async def records(self):
        """StepRecords as they come, then the RequestDone; cancels the request if the consumer stops early
        (a disconnected client: the task is cancelled, or the generator closed)."""
        try:
            while self.done is None:
                record = await self._queue.get()
                if isinstance(record, RequestDone):
                    self.done = record
                yield record
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self.done is None and self.id is not None:
            self.backend.cancel(self.id)
