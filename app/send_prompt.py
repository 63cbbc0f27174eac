"""`glassbox --send-prompt TEXT` (hidden): once the model is loaded, send TEXT and let the reply run long
(greedy, EOS ignored). A test hook: the kill-and-restore test (tests/app/test_kill_restore.py) kills the
app while this reply streams."""
from __future__ import annotations

from PySide6.QtCore import QObject

from engine.records import SamplingParams

PARAMS = SamplingParams(temperature=0, max_new_tokens=4000, ignore_eos=True)


class SendOnLoad(QObject):
    """A slot on a GUI-thread object, so the worker's `loaded` signal reaches it in the GUI thread."""

    def __init__(self, window, text: str):
        super().__init__(window)
        self.window, self.text = window, text
        window.worker.loaded.connect(self.send)

    def send(self, _facts) -> None:
        self.window.worker.loaded.disconnect(self.send)
        self.window.sampler.set_params(PARAMS)
        self.window.controller.submit(self.text)
