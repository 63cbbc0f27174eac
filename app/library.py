"""The folder of saved conversations: list (newest first), a fresh file name for a new one, rename,
delete (to a trash folder), search. Each file is one conversation as ChatController.save writes it;
this module reads them as plain JSON through app/conversation_io.py (nothing in a file is executed)
and writes only the "title" field back. A file that cannot be read is listed as unreadable, never
raised. It does not open conversations into the window (the controller does) nor show anything."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from app import conversation_io
from app.autosave import default_folder as data_folder
from app.files import atomic_write, json_text

TRASH = ".trash"
KEEP_TRASHED = 100  # deleted conversations kept for restore; the least recently modified go first
TITLE_CHARACTERS = 60


def default_folder() -> Path:
    """Beside the autosave, in the app's data folder (GLASSBOX_DATA_DIR overrides it)."""
    return data_folder() / "conversations"


@dataclass(frozen=True)
class Entry:
    """One file of the folder as the conversations panel lists it."""

    path: Path
    title: str
    modified: float  # seconds since the epoch (the file's mtime)
    messages: int  # messages on the active path (system prompt not counted)
    error: str = ""  # why the file cannot be read; "" when it can
    text: str = ""  # the messages' text, what search looks in besides the title

    @property
    def readable(self) -> bool:
        return not self.error


def derive_title(messages: list[dict]) -> str:
    """A title for a conversation that has none: its first user message's first line, shortened."""
    first = next((m["content"] for m in messages if m.get("role") == "user" and m.get("content", "").strip()), "")
    line = first.strip().splitlines()[0].strip() if first.strip() else ""
    if len(line) > TITLE_CHARACTERS:
        line = line[:TITLE_CHARACTERS - 1].rstrip() + "…"
    return line or "Untitled conversation"


@dataclass(frozen=True)
class Conversation:
    """What a file holds, as plain values: what export and the list need."""

    title: str
    system: str
    messages: list[dict]  # the active path, OpenAI-shaped, checked by conversation_io
    model: str


def read(path) -> Conversation:
    """Raises ValueError (with the reason) for a file that is not a readable conversation."""
    system, messages = conversation_io.load(path)  # validates every message
    data = json.loads(Path(path).read_text(encoding="utf-8"))  # readable: load just parsed it
    title, model = data.get("title"), data.get("model")
    title = title.strip() if isinstance(title, str) and title.strip() else derive_title(messages)
    return Conversation(title, system, messages, model if isinstance(model, str) else "")


def searchable_text(messages: list[dict]) -> str:
    """Each message's text, and the names and arguments of the tools it called."""
    parts = []
    for m in messages:
        parts.append(m.get("content") or "")
        for call in m.get("tool_calls", ()):
            parts.append(f"{call['function']['name']} {json.dumps(call['function']['arguments'])}")
    return "\n".join(parts)


def matches(query: str, title: str, text: str) -> bool:
    """The search rule (the panel's filter uses the same): case-insensitive, in the title or the text."""
    q = query.strip().casefold()
    return not q or q in title.casefold() or q in text.casefold()


class Library:
    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else default_folder()
        # Entries by (mtime_ns, size): a file that did not change is not read again at the next listing.
        self._cache: dict[Path, tuple[tuple[int, int], Entry]] = {}

    def entries(self) -> list[Entry]:
        """Every conversation file in the folder, newest first; unreadable ones included, with the reason."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob("*.json"):
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile
                continue
            key = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(path)
            if cached is None or cached[0] != key:
                cached = (key, self._entry(path, stat.st_mtime))
                self._cache[path] = cached
            found.append(cached[1])
        self._cache = {e.path: self._cache[e.path] for e in found}
        return sorted(found, key=lambda e: (e.modified, e.path.name), reverse=True)

    @staticmethod
    def _entry(path: Path, modified: float) -> Entry:
        try:
            c = read(path)
        except ValueError as e:
            return Entry(path, path.stem, modified, 0, str(e).removeprefix(f"{path}: ") or "unreadable")
        return Entry(path, c.title, modified, len(c.messages), "", searchable_text(c.messages))

    def search(self, query: str) -> list[Entry]:
        """Entries whose title or message text contains `query` (any case), newest first."""
        return [e for e in self.entries() if matches(query, e.title, e.text)]

    def new_path(self) -> Path:
        """A file name for a new conversation, named by when it began (titles change, the name does not).
        Nothing is written: the conversation joins the list when it is first saved there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = time.strftime("conversation-%Y%m%d-%H%M%S")
        path, n = self.folder / f"{stem}.json", 1
        while path.exists():
            path, n = self.folder / f"{stem}-{n}.json", n + 1
        return path

    def rename(self, path, title: str) -> None:
        """Write `title` into the file (atomically: the old file or the new one, whole). Every other field,
        branches and records included, is kept as it was. Raises ValueError for an unreadable file."""
        path, title = Path(path), " ".join(title.split())
        if not title:
            raise ValueError("a conversation's title cannot be empty")
        read(path)  # a file this module would not list as readable is not rewritten
        data = json.loads(path.read_text(encoding="utf-8"))
        data["title"] = title
        atomic_write(path, json_text(data))

    def delete(self, path) -> Path:
        """Move the file to the trash folder (returns where it went): a mistaken click loses nothing, so
        the panel needs no confirmation dialog. Unreadable files can be deleted too."""
        path = Path(path)
        trash = self.folder / TRASH
        trash.mkdir(parents=True, exist_ok=True)
        target, n = trash / path.name, 1
        while target.exists():
            target, n = trash / f"{path.stem}-{n}{path.suffix}", n + 1
        path.replace(target)  # its time is kept: restored, it sorts where it was
        self._prune_trash(trash)
        return target

    def restore(self, trashed) -> Path:
        """Undo a delete: the file back in the folder (under a free name) and its new path."""
        trashed = Path(trashed)
        target, n = self.folder / trashed.name, 1
        while target.exists():
            target, n = self.folder / f"{trashed.stem}-{n}{trashed.suffix}", n + 1
        trashed.replace(target)
        return target

    @staticmethod
    def _prune_trash(trash: Path) -> None:
        kept = sorted(trash.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP_TRASHED:]:
            old.unlink(missing_ok=True)
