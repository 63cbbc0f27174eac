"""The sampler panel's parts: a knob (slider and spin box kept in step), the knobs' ranges and labels, the
structured-output examples and the speculative drafters offered."""
from __future__ import annotations

import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QSlider, QSpinBox, QWidget


def narrow(combo: QComboBox, characters: int = 8) -> QComboBox:
    """A combo box that may be narrower than its longest item (the popup still shows it whole): the
    longest example's name must not set the dock's width."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(characters)
    return combo


# name -> (minimum, maximum, step, decimals); decimals 0 means an integer knob. MAIN_KNOBS are always shown,
# MORE_KNOBS sit in the panel's collapsible "More" section with the stop strings and the request's shape.
KNOBS = {
    "temperature": (0.0, 2.0, 0.05, 2),
    "top_k": (0, 200, 1, 0),
    "top_p": (0.01, 1.0, 0.01, 2),
    "min_p": (0.0, 1.0, 0.01, 2),
    "max_new_tokens": (1, 4096, 1, 0),
    "typical_p": (0.01, 1.0, 0.01, 2),
    "repetition_penalty": (0.5, 2.0, 0.01, 2),
    "presence_penalty": (-2.0, 2.0, 0.05, 2),  # OpenAI's range, as SamplingParams checks
    "frequency_penalty": (-2.0, 2.0, 0.05, 2),
}
MAIN_KNOBS = ("temperature", "top_k", "top_p", "min_p", "max_new_tokens")
MORE_KNOBS = ("typical_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
# Beam search scores the model's raw log-probabilities: these knobs do not apply to it.
SAMPLING_KNOBS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty")
LABELS = {"temperature": "Temperature", "top_k": "Top-k (0 = off)", "top_p": "Top-p", "min_p": "Min-p",
          "typical_p": "Typical-p", "repetition_penalty": "Repetition penalty", "max_new_tokens": "Max new tokens",
          "presence_penalty": "Presence penalty", "frequency_penalty": "Frequency penalty"}
TIPS = {"repetition_penalty": "makes tokens already seen less likely (1 = off; CTRL / HF rule)",
        "presence_penalty": "subtracted once from every seen token's logit (0 = off; OpenAI's, -2 to 2)",
        "frequency_penalty": "subtracted once per time a token was seen (0 = off; OpenAI's, -2 to 2)",
        "typical_p": "keeps the tokens whose surprise is closest to the average (1 = off)"}


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


class Knob(QWidget):
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
