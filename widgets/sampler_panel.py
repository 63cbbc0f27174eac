"""Sampler controls: a slider and a spin box per knob of the sampler chain, kept in step, plus
presets. Emits a fresh SamplingParams whenever anything changes."""
from __future__ import annotations

import dataclasses
import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QPlainTextEdit,
                               QSlider, QSpinBox, QVBoxLayout, QWidget)


def narrow(combo: QComboBox, characters: int = 8) -> QComboBox:
    """A combo box that may be narrower than its longest item (the popup still shows it whole): the
    longest example's name must not set the dock's width."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo

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


# Structured output (engine/text/constraints.py): what the constraint text is, and examples to start from.
CONSTRAINT_KINDS = {"Off": "", "JSON schema": "json_schema", "Regex": "regex", "Grammar (Lark / GBNF)": "grammar"}
CONSTRAINT_EXAMPLES = {
    "Person (JSON schema)": ("json_schema", json.dumps({
        "type": "object", "additionalProperties": False, "required": ["name", "age"],
        "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0,
                                                                              "maximum": 130},
                       "languages": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 15}}}},
        indent=2)),
    "Sentiment (JSON enum)": ("json_schema", json.dumps({
        "type": "object", "additionalProperties": False, "required": ["sentiment"],
        "properties": {"sentiment": {"enum": ["positive", "neutral", "negative"]}}}, indent=2)),
    "Date YYYY-MM-DD (regex)": ("regex", r"(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"),
    "Yes / no (GBNF grammar)": ("grammar", 'root ::= ("yes" | "no") ", because " [a-z ]{5,60} "."'),
    "Arithmetic (Lark grammar)": ("grammar", 'start: expr\nexpr: NUMBER (OP NUMBER)*\nNUMBER: /[0-9]{1,4}/\n'
                                             'OP: " + " | " - " | " * "\n'),
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


TOOLS_TIP = "for models whose chat template takes tools; the call is constrained to the tool's schema and " \
            "answered in the chat"
# The drafters offered, by what they are (label -> the engine's name for it). The box is editable: a draft
# model's path, or any engine name ("self-layers:12"), can be typed in and is passed on as typed.
DRAFTERS = {"Off": "", "Prompt lookup (n-gram)": "ngram", "First 20 layers of this model": "self-layers:20",
            "This model in int4": "self-int4"}


class SamplerPanel(QWidget):
    params_changed = Signal(object)  # SamplingParams
    speculative_changed = Signal(object)  # SpeculativeOptions
    tools_changed = Signal(bool)  # offer the built-in tools (calculator) to templates that support tools

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
        # Speculative decoding: which drafter proposes tokens, and how many per step (engine/runtime/speculative.py).
        self.drafter = QComboBox(editable=True, toolTip="Who drafts the tokens the model then checks: prompt lookup "
                                 "(n-gram), the model's own first layers (or type self-layers:L), the model in int4, "
                                 "or type the path of a draft model")
        self.drafter.addItems(DRAFTERS)
        self.spec_k = QSpinBox(minimum=1, maximum=16, value=4, toolTip="tokens drafted per step")
        self.spec_adaptive = QCheckBox("adaptive")
        self.drafter.currentTextChanged.connect(self._emit_speculative)
        self.spec_k.valueChanged.connect(self._emit_speculative)
        self.spec_adaptive.toggled.connect(self._emit_speculative)
        # Structured output: a constraint kind, its text (pasted or from an example).
        self.constraint_kind = QComboBox(toolTip="only tokens that keep the output valid may be sampled")
        for label, kind in CONSTRAINT_KINDS.items():
            self.constraint_kind.addItem(label, kind)
        self.constraint_examples = QComboBox()
        self.constraint_examples.addItems(["Examples…", *CONSTRAINT_EXAMPLES])
        self.constraint_examples.activated.connect(self._apply_example)
        self.constraint_text = QPlainTextEdit(placeholderText="Paste a JSON schema, a regular expression or a "
                                              "grammar (Lark, or llama.cpp GBNF with root ::= ...)")
        self.constraint_text.setMaximumHeight(110)
        self.constraint_kind.currentIndexChanged.connect(self._emit)
        self.offer_tools = QCheckBox("Offer tools (calculator)", toolTip=TOOLS_TIP)
        self.offer_tools.toggled.connect(self.tools_changed)
        self.constraint_text.textChanged.connect(self._emit)

    def _layout(self) -> None:
        for combo in (self.presets, self.drafter, self.constraint_kind, self.constraint_examples):
            narrow(combo)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # a narrow dock puts labels above their fields
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
        structured = QVBoxLayout()
        choice = QHBoxLayout()
        choice.addWidget(self.constraint_kind, 1)
        choice.addWidget(self.constraint_examples, 1)
        structured.addLayout(choice)
        structured.addWidget(self.constraint_text)
        structured.addWidget(self.offer_tools)
        form.addRow("Structured output", structured)

    # -- API ----------------------------------------------------------------------------------
    def params(self) -> SamplingParams:
        values = {name: knob.value() for name, knob in self.knobs.items()}
        values["seed"] = None if self.random_seed.isChecked() else int(self.seed.value())
        kind, text = self.constraint_kind.currentData(), self.constraint_text.toPlainText()
        values["constraint_kind"], values["constraint"] = (kind, text) if kind and text.strip() else ("", "")
        return dataclasses.replace(self._extra, **values)

    def set_tools_available(self, available: bool, model: str = "") -> None:
        """Tools can be offered only to a model whose chat template takes them: otherwise the box is
        disabled and its tooltip says why (its check is kept for the next model that does)."""
        self.offer_tools.setEnabled(available)
        self.offer_tools.setToolTip(TOOLS_TIP if available else
                                    f"Not available: the chat template of {model or 'this model'} takes no tools, "
                                    "so offering the calculator would change nothing")

    def speculative(self) -> SpeculativeOptions:
        text = self.drafter.currentText().strip()
        name = DRAFTERS.get(text, text)
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
        if params.constraint_kind or self.constraint_kind.currentData():  # keep a draft text while it is off
            self.constraint_kind.setCurrentIndex(max(self.constraint_kind.findData(params.constraint_kind), 0))
            self.constraint_text.setPlainText(params.constraint)
        self._quiet = False
        self._emit()

    def _apply_example(self, index: int) -> None:
        name = self.constraint_examples.itemText(index)
        if name in CONSTRAINT_EXAMPLES:
            kind, text = CONSTRAINT_EXAMPLES[name]
            self._quiet = True
            self.constraint_kind.setCurrentIndex(self.constraint_kind.findData(kind))
            self.constraint_text.setPlainText(text)
            self._quiet = False
            self._emit()
        self.constraint_examples.setCurrentIndex(0)

    def _apply_preset(self, index: int) -> None:
        name = self.presets.itemText(index)
        if name in PRESETS:
            self.set_params(dataclasses.replace(self.params(), **PRESETS[name]))
        self.presets.setCurrentIndex(0)

    def _emit(self, *_) -> None:
        if not self._quiet:
            self.params_changed.emit(self.params())
