"""One thread talks to the engine: through loading, a chat turn, a slider move, selecting a token and
continuing from it with another token, every read of the worker's Engine (attributes, method calls,
and each item pulled from a stream it returned) happens on the worker's thread, never the GUI's."""
from __future__ import annotations

import gc
import inspect
import threading
import weakref

import pytest
from PySide6.QtCore import QCoreApplication, QEvent

from app.main_window import MainWindow
from engine.engine import Engine
from engine.records import SamplingParams
from tests.app.test_main_window import TIMEOUT, chat, close_window, open_window, settings  # noqa: F401 (fixture)


class Recording:
    """Passes everything on to the engine it wraps and notes on which thread each use happened."""

    def __init__(self, engine):
        self.wrapped = engine
        self.uses: list[tuple[str, threading.Thread]] = []

    def __getattr__(self, name):  # only for names the wrapper does not have: the engine's
        self.uses.append((name, threading.current_thread()))
        value = getattr(self.wrapped, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            self.uses.append((f"{name}()", threading.current_thread()))
            result = value(*args, **kwargs)
            return self._items(name, result) if inspect.isgenerator(result) else result

        return call

    def _items(self, name, generator):
        for item in generator:  # runs the engine on whichever thread pulls the next item
            self.uses.append((f"{name}() item", threading.current_thread()))
            yield item


@pytest.fixture
def recording(monkeypatch):
    made = []
    real_load = Engine.load

    def load(cls, *args, **kwargs):
        made.append(Recording(real_load(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(Engine, "load", classmethod(load))
    return made


def test_the_gui_thread_never_uses_the_engine(qtbot, settings, hf_checkpoint, recording):  # noqa: F811
    directory, _ = hf_checkpoint("llama")
    window = open_window(qtbot, settings, directory)
    try:
        chat(qtbot, window, "t1 t2 t3 t4", max_new_tokens=6)
        probabilities = window.probabilities
        before = probabilities.bar_heights()
        window.sampler.set_params(SamplingParams(temperature=1.5, top_k=3, max_new_tokens=6))  # a slider move
        qtbot.waitUntil(lambda: str(probabilities.bar_heights()) != str(before), timeout=10_000)
        window.chat.step_clicked.emit(1)  # the user clicks the reply's second token
        qtbot.waitUntil(lambda: probabilities.title.text().startswith("Step 1:"), timeout=10_000)
        assert probabilities.alternative.count() > 0
        with qtbot.waitSignal(window.worker.finished, timeout=TIMEOUT):
            probabilities.alternative.setCurrentIndex(0)
            probabilities.continue_button.click()  # continue from the second token with another one
        qtbot.waitUntil(lambda: not window.controller.busy, timeout=10_000)
        assert len(window.controller.kept) == 2  # the branch ran: the first token, then the chosen one
    finally:
        close_window(window)
    (engine,) = recording
    used = {name for name, _ in engine.uses}
    # the worker steps every request in flight (chat and served) itself, no longer through Engine.stream
    assert {"facts()", "chat_prompt_ids()", "submit()", "step()", "distribution()", "decode()"} <= used
    on_gui = sorted({name for name, thread in engine.uses if thread is threading.main_thread()})
    assert not on_gui, f"the GUI thread used the engine: {on_gui}"


def test_the_window_is_destroyed_by_qt_never_by_the_garbage_collector(settings):  # noqa: F811
    """No Python reference cycle may run through the window: the collector would destroy its widgets in
    whichever thread it runs, the worker's while a reply streams, and that deadlocks (seen in this suite)."""
    gc.collect()
    gc.disable()
    try:
        window = MainWindow(settings=settings, autoload=False)
        ref = weakref.ref(window)
        window.close()  # stops the worker thread
        window.deleteLater()
        del window
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # Qt deletes it, in this (GUI) thread
        assert ref() is None, "a reference cycle keeps the window for the garbage collector"
    finally:
        gc.enable()
