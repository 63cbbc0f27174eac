"""`glassbox --smoke`: the installers' self-test, run on the real main window (offscreen).

Loads the model, sends one greedy prompt for 8 tokens through the worker thread, prints one summary
line and exits 0 (1 on a failure dialog or a short answer, 3 on a time-out). Times in the summary
count from the process's creation, so they include the launcher, a bundle's bootloader and every
import: a cold start to the first token.

`--smoke --prompt-file FILE --max-new-tokens N` is the window's benchmark: FILE's text is sent as the
user's message (greedy, EOS ignored, the default panels open) and the summary line adds prompt_tokens,
decode_tok_s (the engine's own definition: tokens after the first over the time since the first, as
`python -m engine generate` prints it), this process's RSS in MiB at the first and the last token, and
gui_cpu_share: the GUI thread's CPU time over the wall time between those tokens (what the window's
drawing takes from the decode loop on a small machine; app/record_hub.py aims at GUI_SHARE).
"""
from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from engine.records import ModelFacts, SamplingParams

PROMPT = "What is the capital of France?"
TOKENS = 8
PARAMS = SamplingParams(temperature=0, max_new_tokens=TOKENS, ignore_eos=True)  # always 8 tokens


class SmokeRun(QObject):
    """Drives the window as a user would and watches for the end, a failure dialog or a time-out.
    Its methods are slots of a GUI-thread object, so worker signals reach them in the GUI thread."""

    def __init__(self, app: QApplication, window, timeout_s: float = 300.0, prompt: str = PROMPT,
                 tokens: int = TOKENS, measure: bool = False):
        super().__init__(window)
        self.app, self.window, self.done, self.facts = app, window, False, None
        self.prompt, self.tokens, self.measure = prompt, tokens, measure
        self.params = PARAMS if tokens == TOKENS else SamplingParams(temperature=0, max_new_tokens=tokens,
                                                                     ignore_eos=True)
        self.rss_first = self.rss_last = 0.0  # MiB at the first token and at the last
        self.gui_first = self.gui_last = (0.0, 0.0)  # (wall, GUI-thread CPU) seconds at those tokens
        self.started = process_start()
        self.marks: dict[str, float] = {"window": self.elapsed()}
        window.worker.loaded.connect(self.on_loaded)
        window.worker.steps.connect(self.on_steps)
        window.worker.finished.connect(self.on_finished)
        # Failures show a modal dialog (load failed, generation failed): report its text and stop.
        self.poll = QTimer(self, interval=200, timeout=self.check_dialogs)
        self.poll.start()
        QTimer.singleShot(int(timeout_s * 1000), self.on_timeout)

    def elapsed(self) -> float:
        return time.time() - self.started

    def on_loaded(self, facts: ModelFacts) -> None:
        self.marks["loaded"] = self.elapsed()
        self.facts = facts
        self.window.sampler.set_params(self.params)
        self.window.controller.submit(self.prompt)

    def on_steps(self, records) -> None:
        self.marks.setdefault("first_token", self.elapsed())
        if self.measure:
            # Read at the first and the last token only (EOS is ignored: the last is the tokens-th): reading
            # /proc on every token cost the GUI thread (and so the decode loop) more than a panel's redraw.
            if not self.rss_first:
                self.rss_first = rss_mib()
                self.gui_first = (time.perf_counter(), time.thread_time())
            if records[-1].index == self.tokens - 1:
                self.rss_last = rss_mib()
                self.gui_last = (time.perf_counter(), time.thread_time())

    def on_finished(self, done) -> None:
        ids = list(done.results[0].token_ids) if done.results else []
        if done.error or len(ids) != self.tokens:
            return self.finish(1, f"FAILED: {done.error or f'{len(ids)} tokens generated'}")
        text = done.results[0].text  # decoded in the worker thread, like everything the GUI shows
        m = self.marks
        self.finish(0, f"ok model={self.facts.name} tokens={len(ids)} ids={','.join(map(str, ids))} "
                       f"text={text!r} window_s={m['window']:.2f} loaded_s={m['loaded']:.2f} "
                       f"first_token_s={m['first_token']:.2f} total_s={self.elapsed():.2f} "
                       f"{self.measured(done) if self.measure else ''}path={self.facts.path}")

    def measured(self, done) -> str:
        n = len(done.results[0].token_ids)
        decode = (n - 1) / (done.decode_ms / 1000) if done.decode_ms > 0 and n > 1 else 0.0
        wall, cpu = (b - a for a, b in zip(self.gui_first, self.gui_last))
        return (f"prompt_tokens={done.prompt_tokens} decode_tok_s={decode:.2f} rss_start_mb={self.rss_first:.1f} "
                f"rss_end_mb={self.rss_last:.1f} gui_cpu_share={cpu / wall if wall > 0 else 0:.3f} ")

    def check_dialogs(self) -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QMessageBox):
            self.finish(1, f"FAILED: {dialog.windowTitle()}: {dialog.text()}")

    def on_timeout(self) -> None:
        self.finish(3, f"FAILED: no answer after {self.elapsed():.0f} s")

    def finish(self, code: int, summary: str) -> None:
        if self.done:
            return
        self.done = True
        print(f"glassbox smoke {summary}", flush=True)
        self.poll.stop()
        dialog = QApplication.activeModalWidget()
        if dialog is not None:
            dialog.close()
        self.window.close()  # saves settings, stops the worker thread
        self.app.exit(code)


def rss_mib(_process=[]) -> float:
    """This process's resident memory in MiB (0 where psutil cannot read it). The Process is kept: making
    one per token would cost the GUI thread more than what it measures."""
    try:
        import psutil

        if not _process:
            _process.append(psutil.Process())
        return _process[0].memory_info().rss / 2**20
    except Exception:
        return 0.0


def process_start() -> float:
    """When this process was created (a launcher's exec keeps the pid), in time.time() seconds."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # some sandboxes hide /proc: fall back to the interpreter's own start
        return time.time() - time.perf_counter()
