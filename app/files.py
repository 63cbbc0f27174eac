"""Files written so that a crash at any moment leaves the old or the new one whole (autosave and
saved conversations both use this)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash at any moment leaves the old or the new file, whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced (POSIX; Windows has no dir fds)
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def json_text(data) -> str:
    """Readable JSON (UTF-8 as is), except where the text holds lone surrogates (undecodable bytes that
    came in through a terminal or a paste): UTF-8 cannot spell them, so that file is written all-ASCII
    with \\u escapes, which JSON reads back exactly."""
    text = json.dumps(data, ensure_ascii=False, indent=1)
    return json.dumps(data, indent=1) if _LONE_SURROGATE.search(text) else text
