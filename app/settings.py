"""Typed access to QSettings: recent models, sampler values, window geometry and dock layout (versioned:
a layout saved by an older dock arrangement is not restored)."""
from __future__ import annotations

import dataclasses
import json
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
                elif k == "stop":  # JSON text: INI files keep neither tuples nor leading spaces
                    stops = json.loads(v)
                    if isinstance(stops, list) and all(isinstance(x, str) for x in stops):
                        typed[k] = tuple(stops)
            except (TypeError, ValueError):
                continue
        try:
            return dataclasses.replace(defaults, **typed)
        except ValueError:
            return defaults

    def set_sampling(self, params: SamplingParams) -> None:
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            if f.name == "stop":
                value = json.dumps(list(value))
            self.q.setValue(f"sampler/{f.name}", "" if value is None else value)

    # -- sampler presets (widgets/sampler_panel/presets.py) and the request's shape ----------------------
    # Stored as JSON text: an INI file would turn a preset's numbers into strings and its stop strings' spaces
    # and escapes into guesses.
    def user_presets(self) -> dict[str, dict]:
        """The user's own presets, name -> knob values; a damaged entry reads as none."""
        try:
            presets = json.loads(self.q.value("presets/user", "{}"))
        except (TypeError, ValueError):
            return {}
        if not isinstance(presets, dict):
            return {}
        return {name: values for name, values in presets.items() if isinstance(name, str) and isinstance(values, dict)}

    def set_user_presets(self, presets: dict[str, dict]) -> None:
        self.q.setValue("presets/user", json.dumps(presets))

    def active_preset(self) -> str:
        """The preset last chosen ("" = none)."""
        value = self.q.value("presets/active", "")
        return value if isinstance(value, str) else ""

    def set_active_preset(self, name: str) -> None:
        self.q.setValue("presets/active", name)

    def request_shape(self) -> dict:
        """n, best_of and beams as last set (SamplerPanel.request_shape); damaged values read as the defaults."""
        shape = {}
        for key, default in (("n", 1), ("best_of", 0), ("beams", 0)):
            try:
                shape[key] = max(int(self.q.value(f"sampler/{key}", default)), default)
            except (TypeError, ValueError):
                shape[key] = default
        return shape

    def set_request_shape(self, shape: dict) -> None:
        for key in ("n", "best_of", "beams"):
            self.q.setValue(f"sampler/{key}", int(shape.get(key, 0)))

    def dark_theme(self) -> bool:
        return self.q.value("view/dark", False) in (True, "true", "1")

    def set_dark_theme(self, dark: bool) -> None:
        self.q.setValue("view/dark", dark)

    # -- modes and templates: the template panel's state (TemplatePanel.state / restore) -----------
    TEMPLATE_KEYS = ("mode", "choice", "edited", "overflow")

    def template_state(self) -> dict[str, str]:
        """What the template panel last showed: only text values; the panel ignores what it cannot use."""
        stored = {k: self.q.value(f"template/{k}") for k in self.TEMPLATE_KEYS}
        return {k: v for k, v in stored.items() if isinstance(v, str)}

    def set_template_state(self, state: dict) -> None:
        for k in self.TEMPLATE_KEYS:
            if isinstance(state.get(k), str):
                self.q.setValue(f"template/{k}", state[k])

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
