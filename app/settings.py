"""Typed access to QSettings: recent models, sampler values, window geometry and dock layout (versioned:
a layout saved by an older dock arrangement is not restored)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from engine.records import SamplingParams

MAX_RECENT = 8


class Settings:
    """`notice` is set when the settings file was unreadable: it was kept aside and defaults are used."""

    def __init__(self, organization: str = "Glassbox", application: str = "Glassbox", path: str | None = None):
        self.q = QSettings(path, QSettings.IniFormat) if path else QSettings(organization, application)
        self.notice = ""
        problem = _unreadable(self.q)
        if problem:
            from app.autosave import set_aside

            kept = set_aside(Path(self.q.fileName()))
            self.q = QSettings(path, QSettings.IniFormat) if path else QSettings(organization, application)
            self.notice = (f"The settings file could not be read ({problem}). It was kept as {kept}; "
                           "Glassbox starts with default settings.")

    def recent_models(self) -> list[str]:
        value = self.q.value("models/recent", [])
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        return [v for v in values if isinstance(v, str)]

    def add_recent_model(self, path: str) -> None:
        recent = [p for p in self.recent_models() if p != path]
        self.q.setValue("models/recent", [path] + recent[: MAX_RECENT - 1])

    def sampling(self) -> SamplingParams:
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        stored = {k: self.q.value(f"sampler/{k}") for k in fields if self.q.contains(f"sampler/{k}")}
        defaults = SamplingParams()
        typed = {}
        for k, v in stored.items():
            default = getattr(defaults, k)
            try:
                if isinstance(default, bool):
                    typed[k] = v in (True, "true", "1")
                elif isinstance(default, (int, float)) and not isinstance(default, bool):
                    typed[k] = type(default)(v)
                elif k == "seed":
                    typed[k] = None if v in (None, "", "None") else int(v)
            except (TypeError, ValueError):
                continue
        try:
            return dataclasses.replace(defaults, **typed)
        except ValueError:
            return defaults

    def set_sampling(self, params: SamplingParams) -> None:
        for f in dataclasses.fields(params):
            if f.name != "stop":
                value = getattr(params, f.name)
                self.q.setValue(f"sampler/{f.name}", "" if value is None else value)

    def dark_theme(self) -> bool:
        return self.q.value("view/dark", False) in (True, "true", "1")

    def set_dark_theme(self, dark: bool) -> None:
        self.q.setValue("view/dark", dark)

    def save_window(self, window, layout_version: int = 0) -> None:
        self.q.setValue("window/geometry", window.saveGeometry())
        self.q.setValue("window/state", window.saveState(layout_version))

    def restore_window(self, window, layout_version: int = 0) -> tuple[bool, bool]:
        """Geometry and dock layout as last saved; a layout saved under another version is left out (Qt
        refuses it). -> (geometry restored, layout restored): what was not, the window chooses itself."""
        restored = []
        for key, restore in (("window/geometry", window.restoreGeometry),
                             ("window/state", lambda state: window.restoreState(state, layout_version))):
            value = self.q.value(key)
            # anything but bytes is a damaged entry: keep the default
            restored.append(isinstance(value, (QByteArray, bytes)) and bool(restore(value)))
        return restored[0], restored[1]

    def sync(self) -> None:
        self.q.sync()


def _unreadable(q: QSettings) -> str:
    """Why the settings file cannot be trusted ("" if it can): Qt's INI reader skips what it cannot
    parse without a word, so binary junk is looked for as well."""
    if q.status() != QSettings.NoError:
        return f"Qt reports {q.status().name}"
    path = Path(q.fileName())
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as e:
        return str(e)
    if b"\0" in data:
        return "it holds binary data"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    return ""
