"""`tokenizers` pipelines built and run in a helper process, so that building one never holds this
process's GIL.

`tokenizers` builds a vocabulary in one Rust call that holds the GIL throughout (~50-120 ms for the
default model's 49k BPE vocabulary; Tokenizer.from_str / from_file hold it longer still), and offers no
GIL-free constructor. In the window that call runs on the worker thread while the GUI thread, which
needs the GIL for every event it handles, waits. So when the caller is not the main thread (someone
else in this process may want to run: a GUI), the pipeline is built in a child process and used from
there: this process holds a RemoteBackend, the part of the `tokenizers` API engine/text/tokenizer.py
uses, whose calls wait on a pipe with the GIL released. Every token's piece and its text on its own
are fetched once, in chunks, so the per-token display text costs no round trip, and decode runs here
from those pieces where the pipeline allows (engine/text/piece_decoder.py): streaming costs none
either. One child serves the whole process and exits at end of file on its socket: when this process
exits or is killed.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection

from engine.errors import EngineError, ModelFormatError
from engine.text import tokenizer_process
from engine.text.piece_decoder import PieceDecoder

START_TIMEOUT_S = 60.0  # the child imports `tokenizers` (a second or two on a busy 2-core box)
CHUNK = 8192  # ids per table fetch: each unpickling holds the GIL for a few ms only


def wanted() -> bool:
    """Build out of process when another thread of this process may be waiting for the GIL: the caller
    is not the main thread (the window's worker). The CLI and scripts build in process, as before."""
    return threading.current_thread() is not threading.main_thread() and not _service.unavailable


def build(local, remote):
    """remote() when wanted() and the helper process runs, else local() (in this process)."""
    if wanted():
        try:
            return remote()
        except ServiceUnavailable:  # e.g. a sandbox without subprocesses: once, then always in process
            _service.unavailable = True
    return local()


class ServiceUnavailable(EngineError):
    """The helper process could not be started (callers then build in process)."""


class _Service:
    """The client end: one request, one answer, under a lock (any thread may call)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conn = None
        self._process = None
        self._released: list[int] = []  # handles whose backends were collected, sent with the next call
        self.unavailable = False  # the helper could not be started: build in process from now on

    def call(self, op: str, *args):
        with self._lock:
            if self._conn is None:
                self._start()
            try:
                if self._released:
                    released, self._released = self._released, []  # a finalizer may append meanwhile
                    self._conn.send(("release", tuple(released)))
                self._conn.send((op, args))
                status, *value = self._conn.recv()  # waits with the GIL released
            except (EOFError, OSError) as e:
                self._conn = None
                raise EngineError(f"the tokenizer process stopped ({type(e).__name__})") from None
        if status == "ok":
            return value[0]
        kind, payload = value
        if kind == "ModelFormatError":
            raise ModelFormatError(*payload)
        raise Exception(payload)  # as `tokenizers` raises: callers wrap it with the file's name

    def release(self, handle: int) -> None:
        self._released.append(handle)  # list.append is atomic; no lock (a finalizer may run anywhere)

    def _start(self) -> None:
        try:
            conn, process = _spawn_frozen() if getattr(sys, "frozen", False) else _spawn()
        except Exception as e:  # OSError; ValueError / TypeError where there are no fds or no sys.executable
            raise ServiceUnavailable(f"cannot start the tokenizer process: {e}") from None
        try:
            ready = conn.poll(START_TIMEOUT_S) and conn.recv() == ("ok", "ready")
        except (EOFError, OSError):  # it exited (e.g. cannot import `tokenizers`)
            ready = False
        if not ready:
            process.kill()
            raise ServiceUnavailable("the tokenizer process did not start")
        self._conn, self._process = conn, process
        atexit.register(self._stop, conn, process)

    @staticmethod
    def _stop(conn, process) -> None:
        """At exit: close our end (the child then exits) and reap it, so no zombie and no warning."""
        conn.close()
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()


def _spawn():
    """`python -m engine.text.tokenizer_process FD`, one socket between us. Not multiprocessing's spawn:
    that re-runs the caller's main module in the child, and a script without a __main__ guard would
    load its model there too."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # finds `engine` as we do
    try:
        process = subprocess.Popen([sys.executable, "-m", tokenizer_process.__name__, str(theirs.fileno())], env=env,
                                   pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL)  # stdout is the caller's (summary lines)
    finally:
        theirs.close()  # the child holds its end now: its exit reaches us as end of file
    return Connection(ours.detach()), process


def _spawn_frozen():
    """In a PyInstaller bundle `sys.executable` is the app itself: multiprocessing's spawn, which the
    bundle's entry point serves (app/__main__.py calls multiprocessing.freeze_support() first)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=tokenizer_process.serve, args=(theirs,), name="glassbox-tokenizer",
                              daemon=True)
    process.start()
    theirs.close()
    return ours, process


_service = _Service()


class RemoteBackend:
    """A `tokenizers.Tokenizer` living in the helper process, with the API engine/text/tokenizer.py uses
    of a non-HF backend (encode -> ids, `special`), plus to_str / save for llguidance and MoEfication."""

    def __init__(self, handle: int, vocab_size: int, special: set[int]):
        self.handle, self.special = handle, special
        self._vocab_size = vocab_size
        self._pieces: list[str | None] = []
        self._alone: list[str] = []  # decode([i]): each token's text on its own
        for start in range(0, vocab_size, CHUNK):
            pieces, alone = _service.call("table", handle, start, min(start + CHUNK, vocab_size))
            self._pieces += pieces
            self._alone += alone
        # Decoding here, from the pieces, when the pipeline allows: no round trip per generated token.
        self._local = PieceDecoder.for_pipeline(_service.call("decoder", handle), self._pieces, self._alone, special)
        weakref.finalize(self, _service.release, handle)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return _service.call("encode", self.handle, text, add_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if len(ids) == 1 and not skip_special_tokens and 0 <= ids[0] < self._vocab_size:
            return self._alone[ids[0]]
        if self._local is not None and all(0 <= i < self._vocab_size for i in ids):
            return self._local.decode(ids, skip_special_tokens)
        return _service.call("decode", self.handle, list(ids), skip_special_tokens)

    def id_to_token(self, i: int):
        return self._pieces[i] if 0 <= i < self._vocab_size else None

    def token_to_id(self, token: str):
        return _service.call("token_to_id", self.handle, token)

    def get_vocab_size(self) -> int:
        return self._vocab_size

    def to_str(self) -> str:
        return _service.call("to_str", self.handle)

    def save(self, path: str) -> None:
        _service.call("save", self.handle, str(path))


def gguf_backend(meta: dict, path) -> RemoteBackend:
    """engine/text/tokenizer_gguf.gguf_backend, run in the helper process."""
    keep = {k: v for k, v in meta.items() if k.startswith("tokenizer.ggml.")}  # not the template, not tensors
    for key, value in keep.items():  # long lists go ahead in chunks: pickling 49k strings at once holds the GIL ~20 ms
        if isinstance(value, list) and len(value) > CHUNK:
            for start in range(0, len(value), CHUNK):
                _service.call("stage", key, value[start:start + CHUNK])
            keep[key] = None
    return RemoteBackend(*_service.call("gguf", keep, str(path)))


def file_backend(path) -> RemoteBackend:
    """tokenizers.Tokenizer.from_file(path), run in the helper process."""
    return RemoteBackend(*_service.call("file", str(path)))
