"""Typed access to QSettings: recent models, sampler values, window geometry and dock layout."""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import QSettings

from engine.records import SamplingParams

MAX_RECENT = 8


class Settings:
    def __init__(self, organization: str = "Glassbox", application: str = "Glassbox"):
        self.q = QSettings(organization, application)

    def recent_models(self) -> list[str]:
        value = self.q.value("models/recent", [])
        return [value] if isinstance(value, str) else list(value or [])

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

    def save_window(self, window) -> None:
        self.q.setValue("window/geometry", window.saveGeometry())
        self.q.setValue("window/state", window.saveState())

    def restore_window(self, window) -> None:
        if self.q.contains("window/geometry"):
            window.restoreGeometry(self.q.value("window/geometry"))
        if self.q.contains("window/state"):
            window.restoreState(self.q.value("window/state"))

    def sync(self) -> None:
        self.q.sync()
