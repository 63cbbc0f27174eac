"""Sampler presets: the built-in ones and the user's own (save as, rename, delete), which one is active and
whether a knob has moved away from it ("(modified)"). A preset is a dict of knob values; storing the user's
presets is the app's business (app/settings.py), this bar only says when they changed."""
from __future__ import annotations

import math

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QInputDialog, QLabel, QMenu, QMessageBox, QToolButton,
                               QWidget)

# What a preset holds: the sampler chain, the reply's length, seed and stop strings (SamplingParams fields) and
# the request's shape (SamplerPanel.request_shape). Not a structured-output constraint: that belongs to a task.
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "max_new_tokens", "seed", "stop")
SHAPE_FIELDS = ("n", "best_of", "beams")
PRESET_FIELDS = SAMPLING_FIELDS + SHAPE_FIELDS

# Built-ins set the whole chain (penalties off, one sample) so that choosing one always means the same thing;
# they leave the reply's length, seed and stop strings as they are.
_PLAIN = dict(top_k=0, min_p=0.0, typical_p=1.0, repetition_penalty=1.0, presence_penalty=0.0,
              frequency_penalty=0.0, n=1, best_of=0, beams=0)
BUILT_IN = {
    "Default": {**_PLAIN, "temperature": 0.7, "top_p": 1.0},
    "Greedy": {**_PLAIN, "temperature": 0.0, "top_p": 1.0},
    "Balanced": {**_PLAIN, "temperature": 0.7, "top_p": 0.9},
    "Creative": {**_PLAIN, "temperature": 1.1, "top_p": 0.98, "min_p": 0.02},
    "Beam search ×4": {**_PLAIN, "temperature": 0.0, "top_p": 1.0, "beams": 4},
}
NO_PRESET = "Custom"  # the box's text while no preset is active


def same(a, b) -> bool:
    """Equal as knob values: floats within rounding, a list read back from JSON equal to a tuple."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    return a == b


def moved_from(preset: dict, current: dict) -> bool:
    return any(not same(current.get(name), value) for name, value in preset.items())


class PresetBar(QWidget):
    """The active preset's name in a box, "(modified)" beside it, and a ⋯ menu: save as, save, rename, delete.
    The panel feeds it the current values (`track`) and applies what `chosen` hands it."""

    chosen = Signal(object)  # dict: the values of the preset the user picked
    active_changed = Signal(str)  # "" when no preset is active
    user_presets_changed = Signal(object)  # dict[str, dict]: after save as, save, rename or delete

    def __init__(self):
        super().__init__()
        self._user: dict[str, dict] = {}
        self._active = ""
        self._current: dict = {}
        # Asks for a name: (title, suggestion) -> (text, ok). Replaceable, so tests need no modal dialog.
        self.ask_name = lambda title, text: QInputDialog.getText(self, title, "Name", text=text)
        self.combo = QComboBox(toolTip="Built-in presets, then yours (⋯ saves the current settings as one)")
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(8)
        self.combo.activated.connect(lambda i: self.choose(self.combo.itemData(i) or ""))
        self.state = QLabel("(modified)", toolTip="A knob has moved away from the preset; pick it again to go back")
        self.state.hide()
        self.menu = QMenu(self)
        self.save_as_action = self.menu.addAction("Save current as…", self._ask_save_as)
        self.save_action = self.menu.addAction("Save over this preset", lambda: self.save_as(self._active))
        self.rename_action = self.menu.addAction("Rename…", self._ask_rename)
        self.delete_action = self.menu.addAction("Delete", lambda: self.delete(self._active))
        self.menu_button = QToolButton(text="⋯", toolTip="Save, rename or delete presets", menu=self.menu)
        self.menu_button.setPopupMode(QToolButton.InstantPopup)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.state)
        layout.addWidget(self.menu_button)
        self._refill()

    # -- state ---------------------------------------------------------------------------------------
    def user_presets(self) -> dict[str, dict]:
        return {name: dict(values) for name, values in self._user.items()}

    def set_user_presets(self, presets: dict[str, dict]) -> None:
        """The user's presets as stored (no signal); a name a built-in has is left out."""
        self._user = {name: {k: v for k, v in values.items() if k in PRESET_FIELDS}
                      for name, values in presets.items() if name not in BUILT_IN and isinstance(values, dict)}
        if self._active not in BUILT_IN and self._active not in self._user:
            self._active = ""
        self._refill()

    def values(self, name: str) -> dict | None:
        return BUILT_IN.get(name) or self._user.get(name)

    def active(self) -> str:
        return self._active

    def set_active(self, name: str) -> None:
        """Mark `name` active without applying it (restoring the last session: its knobs come from settings,
        so "(modified)" shows whether they still match). An unknown name means none."""
        name = name if self.values(name) is not None else ""
        if name != self._active:
            self._active = name
            self.active_changed.emit(name)
        self._refill()

    def modified(self) -> bool:
        preset = self.values(self._active)
        return preset is not None and moved_from(preset, self._current)

    def track(self, current: dict) -> None:
        """The panel's values now (PRESET_FIELDS): decides "(modified)"."""
        self._current = dict(current)
        self.state.setVisible(self.modified())

    # -- verbs ---------------------------------------------------------------------------------------
    def choose(self, name: str) -> None:
        """Apply a preset (picked again when modified: back to its values)."""
        values = self.values(name)
        if values is not None:
            self.set_active(name)
            self.chosen.emit(dict(values))
        else:
            self.set_active("")

    def save_as(self, name: str) -> None:
        name = name.strip()
        if not name or name == NO_PRESET or name in BUILT_IN:
            raise ValueError(f"“{name}” is a built-in preset's name; choose another" if name
                             else "a preset needs a name")
        self._user[name] = {k: self._current[k] for k in PRESET_FIELDS if k in self._current}
        self.user_presets_changed.emit(self.user_presets())
        self.set_active(name)

    def rename(self, old: str, new: str) -> None:
        new = new.strip()
        if old not in self._user:
            raise ValueError("built-in presets cannot be renamed")
        if not new or new == NO_PRESET or new in BUILT_IN or (new in self._user and new != old):
            raise ValueError(f"“{new}” is taken" if new else "a preset needs a name")
        self._user = {(new if name == old else name): values for name, values in self._user.items()}
        self.user_presets_changed.emit(self.user_presets())
        self.set_active(new if self._active == old else self._active)

    def delete(self, name: str) -> None:
        if name not in self._user:
            raise ValueError("built-in presets cannot be deleted")
        del self._user[name]
        self.user_presets_changed.emit(self.user_presets())
        self.set_active("" if self._active == name else self._active)

    # -- widgets -------------------------------------------------------------------------------------
    def _refill(self) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(NO_PRESET, "")
        for name in BUILT_IN:
            self.combo.addItem(name, name)
        if self._user:
            self.combo.insertSeparator(self.combo.count())
        for name in sorted(self._user, key=str.lower):
            self.combo.addItem(name, name)
        self.combo.setCurrentIndex(max(self.combo.findData(self._active), 0))
        self.combo.blockSignals(False)
        own = self._active in self._user
        for action in (self.save_action, self.rename_action, self.delete_action):
            action.setEnabled(own)
            action.setToolTip("" if own else "Built-in presets stay as they are: save yours as a new one")
        self.menu.setToolTipsVisible(True)
        self.state.setVisible(self.modified())

    def _ask_save_as(self) -> None:
        name, ok = self.ask_name("Save preset as", self._active if self._active in self._user else "")
        if ok:
            self._try(self.save_as, name)

    def _ask_rename(self) -> None:
        name, ok = self.ask_name("Rename preset", self._active)
        if ok:
            self._try(self.rename, self._active, name)

    def _try(self, verb, *args) -> None:
        try:
            verb(*args)
        except ValueError as e:
            QMessageBox.warning(self, "Presets", str(e).capitalize())
