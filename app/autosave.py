"""Autosave: the conversation is written atomically (temp file, fsync, rename, fsync of the folder)
after every completed turn and every few seconds while a reply streams, so killing the app loses at
most the tokens since the last write. At the next start the last session's file is moved out of the
way (this session's autosaves must not overwrite it before the user decides) and offered back; a file
that cannot be read is kept aside under a `.corrupt-<time>` name and reported, never overwritten.
Plain JSON in conversation_io's format, plus the reply that was streaming (`partial`) and `clean_exit`:
a session that ends normally (close) marks its last save so, and the next start offers nothing; only a
crash or a kill leaves a file without the mark, which is offered back. The writes run on one background
thread, in order: an fsync can take tens of milliseconds, too long for the GUI thread.
"""
from __future__ import annotations

import json
import os

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app import conversation_io
from app.files import atomic_write, json_text

AUTOSAVE = "autosave.json"
UNSAVED = "unsaved-*.json"  # earlier sessions' autosaves, waiting for the user's restore / discard
KEEP_UNSAVED = 5
DATA_DIR_ENV = "GLASSBOX_DATA_DIR"  # overrides Qt's per-user data folder (tests, portable installs)

def set_aside(path: Path) -> Path:
    """Rename a file that cannot be read to `<name>.corrupt-<time><suffix>` beside it, and return that."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.corrupt-{stamp}{path.suffix}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.corrupt-{stamp}-{n}{path.suffix}")
        n += 1
    path.replace(target)
    return target

def default_folder() -> Path:
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    from PySide6.QtCore import QStandardPaths

    return Path(QStandardPaths.writableLocation(QStandardPaths.AppDataLocation))

@dataclass
class Snapshot:
    """A conversation found on disk at start: what the user may restore."""

    path: Path
    system: str
    messages: list[dict]
    partial: str  # the reply that was streaming at the last write ("" if none)
    saved_at: float
    clean_exit: bool = False  # written by a session that ended normally: not offered
    title: str = ""

class Autosave:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / AUTOSAVE
        self.error = ""  # the last write's failure (a full or read-only disk), "" once a write succeeds
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glassbox-autosave")
        self._last: dict | None = None  # the latest save's data, marked at close
        self.closed = False  # closed normally: every later save is marked as a clean exit too

    def save(self, system: str, messages: list[dict], partial: str = "", model: str = "", tree=None,
             title: str = "") -> None:
        """Queue one atomic write of the whole conversation, every branch (small: text and token ids, no
        step records). The text is built now, so later changes to the conversation cannot leak into it."""
        data = {**conversation_io.conversation_data(system, messages, (), model, tree, title),
                "partial": partial, "saved_at": time.time(), "clean_exit": self.closed}
        text = json_text(data)
        self._last = json.loads(text)  # a copy: later changes to `messages` stay out of it
        self._submit(text)

    def _submit(self, text: str) -> None:
        try:
            self._writer.submit(self._write, text)
        except RuntimeError:  # closed (a reply that ended after the window closed): write it here
            self._write(text)

    def flush(self) -> None:
        """Wait until every queued save is on disk."""
        try:
            self._writer.submit(lambda: None).result()
        except RuntimeError:  # closed: close() already waited for them
            pass

    def close(self) -> None:
        """The session ends normally: the last save is rewritten with its clean-exit mark, and every queued
        save reaches the disk first. (A reply that ends after this is saved with the mark, at once.)"""
        self.closed = True
        if self._last is not None:
            self._submit(json_text({**self._last, "clean_exit": True}))
        self._writer.shutdown(wait=True)

    def _write(self, text: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, text)
            self.error = ""
        except (OSError, ValueError) as e:  # never silent: the window reports it at the next save
            self.error = str(e)

    def take_unsaved(self) -> tuple[Snapshot | None, list[str]]:
        """At start: (the newest earlier conversation worth offering, or None; notices for the user about
        files that could not be read and were set aside)."""
        notices: list[str] = []
        self.flush()
        if self.path.is_file():  # the last session's: make room for this session's autosaves
            self.path.replace(self.folder / f"unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json")
        found = sorted(self.folder.glob(UNSAVED), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in found[KEEP_UNSAVED:]:
            old.unlink(missing_ok=True)
        for path in found[:KEEP_UNSAVED]:
            try:
                snapshot = self._read(path)
            except ValueError as e:
                kept = set_aside(path)
                notices.append(f"The autosaved conversation could not be read ({e}). It was kept as {kept}; "
                               "Glassbox starts with an empty conversation.")
                continue
            if (snapshot.messages or snapshot.partial) and not snapshot.clean_exit:
                return snapshot, notices
            path.unlink(missing_ok=True)  # nothing in it worth offering, or closed normally: nothing lost
        return None, notices

    def forget(self, snapshot: Snapshot) -> None:
        """The user restored or discarded it: it is no longer pending."""
        snapshot.path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> Snapshot:
        saved = conversation_io.read(path)  # validates, raises ValueError with the reason
        data = saved.data
        partial = data.get("partial") or ""
        saved_at = data.get("saved_at") or path.stat().st_mtime
        clean_exit = data.get("clean_exit", False)
        if not isinstance(partial, str) or not isinstance(saved_at, (int, float)) or not isinstance(clean_exit, bool):
            raise ValueError(f"{path}: 'partial' must be text, 'saved_at' a time and 'clean_exit' true or false")
        return Snapshot(path, saved.system, saved.messages, partial, float(saved_at), clean_exit, saved.title)
