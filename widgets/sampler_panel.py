"""Sampler controls: a slider and a spin box per knob of the sampler chain, kept in step, plus
presets. Emits a fresh SamplingParams whenever anything changes."""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QSlider, QSpinBox,
                               QWidget)

from engine.records import SamplingParams, SpeculativeOptions

# name -> (minimum, maximum, step, decimals); decimals 0 means an integer knob
KNOBS = {
    "temperature": (0.0, 2.0, 0.05, 2),
    "top_k": (0, 200, 1, 0),
    "top_p": (0.01, 1.0, 0.01, 2),
    "min_p": (0.0, 1.0, 0.01, 2),
    "typical_p": (0.01, 1.0, 0.01, 2),
    "repetition_penalty": (0.5, 2.0, 0.01, 2),
    "max_new_tokens": (1, 4096, 1, 0),
}
LABELS = {"temperature": "Temperature", "top_k": "Top-k (0 = off)", "top_p": "Top-p", "min_p": "Min-p",
          "typical_p": "Typical-p", "repetition_penalty": "Repetition penalty", "max_new_tokens": "Max new tokens"}
PRESETS = {
    "Greedy": dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0),
    "Balanced": dict(temperature=0.7, top_k=0, top_p=0.9, min_p=0.0, typical_p=1.0),
    "Creative": dict(temperature=1.1, top_k=0, top_p=0.98, min_p=0.02, typical_p=1.0),
}


class _Knob(QWidget):
    """A slider and a spin box showing one value; the slider works in integer steps."""

    changed = Signal()

    def __init__(self, lo, hi, step, decimals):
        super().__init__()
        self.step = step
        self.spin = QDoubleSpinBox(decimals=decimals) if decimals else QSpinBox()
        self.spin.setRange(lo, hi)
        self.spin.setSingleStep(step)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(round(lo / step), round(hi / step))
        self.slider.valueChanged.connect(lambda v: self.spin.setValue(v * self.step if self.decimal else v))
        self.spin.valueChanged.connect(self._from_spin)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)

    @property
    def decimal(self) -> bool:
        return isinstance(self.spin, QDoubleSpinBox)

    def _from_spin(self, value) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value / self.step))
        self.slider.blockSignals(False)
        self.changed.emit()

    def value(self):
        return float(self.spin.value()) if self.decimal else int(self.spin.value())

    def set_value(self, value) -> None:
        self.spin.setValue(value)


DRAFTERS = ("off", "ngram", "self-layers:20", "self-int4")  # editable: a draft model's path can be typed in


class SamplerPanel(QWidget):
    params_changed = Signal(object)  # SamplingParams
    speculative_changed = Signal(object)  # SpeculativeOptions

    def __init__(self, parent=None):
        super().__init__(parent)
        self._quiet = False
        self._extra = SamplingParams()  # fields without a control here (stop strings, penalties) are kept
        self._setup_ui()
        self._layout()
        self.set_params(SamplingParams())

    def _setup_ui(self) -> None:
        self.knobs = {name: _Knob(*spec) for name, spec in KNOBS.items()}
        for knob in self.knobs.values():
            knob.changed.connect(self._emit)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.random_seed = QCheckBox("random")
        self.seed.valueChanged.connect(self._emit)
        self.random_seed.toggled.connect(lambda on: (self.seed.setEnabled(not on), self._emit()))
        self.presets = QComboBox()
        self.presets.addItems(["Presets…", *PRESETS])
        self.presets.activated.connect(self._apply_preset)
        # Speculative decoding: which drafter proposes tokens, and how many per step (engine/speculative.py).
        self.drafter = QComboBox(editable=True, toolTip="ngram = prompt lookup; self-layers:L = the model's first L "
                                 "layers; self-int4 = the model in int4; or the path of a draft model")
        self.drafter.addItems(DRAFTERS)
        self.spec_k = QSpinBox(minimum=1, maximum=16, value=4, toolTip="tokens drafted per step")
        self.spec_adaptive = QCheckBox("adaptive")
        self.drafter.currentTextChanged.connect(self._emit_speculative)
        self.spec_k.valueChanged.connect(self._emit_speculative)
        self.spec_adaptive.toggled.connect(self._emit_speculative)

    def _layout(self) -> None:
        form = QFormLayout(self)
        form.addRow("Preset", self.presets)
        for name, knob in self.knobs.items():
            form.addRow(LABELS[name], knob)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        form.addRow("Seed", seed_row)
        spec_row = QHBoxLayout()
        spec_row.addWidget(self.drafter, 1)
        spec_row.addWidget(self.spec_k)
        spec_row.addWidget(self.spec_adaptive)
        form.addRow("Speculative (k)", spec_row)

    # -- API ----------------------------------------------------------------------------------
    def params(self) -> SamplingParams:
        values = {name: knob.value() for name, knob in self.knobs.items()}
        values["seed"] = None if self.random_seed.isChecked() else int(self.seed.value())
        return dataclasses.replace(self._extra, **values)

    def speculative(self) -> SpeculativeOptions:
        name = self.drafter.currentText().strip()
        return SpeculativeOptions("" if name in ("", "off") else name, self.spec_k.value(),
                                  self.spec_adaptive.isChecked())

    def _emit_speculative(self, *_) -> None:
        self.speculative_changed.emit(self.speculative())

    def set_params(self, params: SamplingParams) -> None:
        self._quiet = True
        self._extra = params
        for name, knob in self.knobs.items():
            knob.set_value(getattr(params, name))
        self.random_seed.setChecked(params.seed is None)
        self.seed.setValue(params.seed or 0)
        self._quiet = False
        self._emit()

    def _apply_preset(self, index: int) -> None:
        name = self.presets.itemText(index)
        if name in PRESETS:
            self.set_params(dataclasses.replace(self.params(), **PRESETS[name]))
        self.presets.setCurrentIndex(0)

    def _emit(self, *_) -> None:
        if not self._quiet:
            self.params_changed.emit(self.params())
