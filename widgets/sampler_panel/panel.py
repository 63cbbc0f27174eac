"""The sampler panel: a slider and a spin box per knob of the sampler chain, seed, stop strings, the request's
shape (n samples, best-of, beam width), presets, speculative decoding and structured output. Emits a fresh
SamplingParams whenever a knob moves; what does not apply (sampling knobs under beam search, beams with a
drafter) is disabled and says why."""
from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPlainTextEdit, QSpinBox,
                               QToolButton, QVBoxLayout, QWidget)

from engine.records import SamplingParams, SpeculativeOptions
from widgets.sampler_panel.controls import (CONSTRAINT_EXAMPLES, CONSTRAINT_KINDS, DRAFTERS, KNOBS, LABELS,
                                            MAIN_KNOBS, MORE_KNOBS, SAMPLING_KNOBS, TIPS, TOOLS_TIP, Knob, narrow)
from widgets.sampler_panel.presets import SAMPLING_FIELDS, PresetBar
from widgets.sampler_panel.stops import StopStringsEdit

BEAM_NOTE = ("Beam search keeps the likeliest continuations under the model's own probabilities: the greyed "
             "settings do not apply.")
SPEC_BLOCKS_BEAMS = "Beam search does not combine with speculative decoding: set Speculative to Off first"


class SamplerPanel(QWidget):
    params_changed = Signal(object)  # SamplingParams
    shape_changed = Signal(object)  # dict(n=, best_of=, beams=): GenerationRequest's (and Turn's) fields
    speculative_changed = Signal(object)  # SpeculativeOptions
    tools_changed = Signal(bool)  # offer the built-in tools (calculator) to templates that support tools

    def __init__(self, parent=None):
        super().__init__(parent)
        self._quiet = False
        self._extra = SamplingParams()  # fields without a control here (ignore_eos) are kept
        self._last_speculative = SpeculativeOptions()
        self._setup_ui()
        self._layout()
        self.set_params(SamplingParams())
        self._apply_rules()

    def _setup_ui(self) -> None:
        self.presets = PresetBar()
        self.presets.chosen.connect(self._apply_preset_values)
        self.beam_note = QLabel(BEAM_NOTE, wordWrap=True)
        self.beam_note.hide()
        self.knobs = {name: Knob(*spec) for name, spec in KNOBS.items()}
        for name, knob in self.knobs.items():
            knob.setToolTip(TIPS.get(name, ""))
            knob.changed.connect(self._emit)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.random_seed = QCheckBox("random")
        self.seed.valueChanged.connect(self._emit)
        self.random_seed.toggled.connect(lambda on: (self._apply_rules(), self._emit()))
        self.stops = StopStringsEdit()
        self.stops.changed.connect(self._emit)
        # The request's shape (engine/records/requests.py GenerationRequest).
        self.n_samples = QSpinBox(minimum=1, maximum=16, toolTip="Replies sampled for the same prompt, shown side "
                                  "by side; they share the prompt's KV blocks")
        self.best_of = QSpinBox(minimum=0, maximum=16, specialValueText="off", toolTip="Sample this many and keep "
                                "the best by mean log-probability (at least n)")
        self.beams = QSpinBox(minimum=0, maximum=16, specialValueText="off", toolTip="Beam search width: keep the "
                              "most likely continuations instead of sampling")
        self.n_samples.valueChanged.connect(lambda n: self._shape_moved(n_moved=True))
        self.best_of.valueChanged.connect(lambda b: self._shape_moved(n_moved=False))
        self.beams.valueChanged.connect(lambda b: self._shape_moved(n_moved=False))
        self.more = QToolButton(checkable=True, toolButtonStyle=Qt.ToolButtonTextBesideIcon, arrowType=Qt.RightArrow,
                                autoRaise=True, toolTip="Penalties, typical-p, stop strings, samples and beams")
        self.more.toggled.connect(self._show_more)
        # Speculative decoding: which drafter proposes tokens, and how many per step (engine/runtime/speculative.py).
        self.drafter = QComboBox(editable=True, toolTip="Who drafts the tokens the model then checks: prompt lookup "
                                 "(n-gram), the model's own first layers (or type self-layers:L), the model in int4, "
                                 "or type the path of a draft model")
        self.drafter.addItems(DRAFTERS)
        self.spec_k = QSpinBox(minimum=1, maximum=16, value=4, toolTip="tokens drafted per step")
        self.spec_adaptive = QCheckBox("adaptive")
        self.drafter.currentTextChanged.connect(lambda _: (self._apply_rules(), self._emit_speculative()))
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
        for combo in (self.drafter, self.constraint_kind, self.constraint_examples):
            narrow(combo)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # a narrow dock puts labels above their fields
        form.addRow("Preset", self.presets)
        form.addRow(self.beam_note)
        for name in MAIN_KNOBS:
            form.addRow(LABELS[name], self.knobs[name])
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.random_seed)
        form.addRow("Seed", seed_row)
        form.addRow(self.more)
        self.more_box = QWidget()  # rarely used settings, folded away by default
        more = QFormLayout(self.more_box)
        more.setRowWrapPolicy(QFormLayout.WrapLongRows)
        more.setContentsMargins(12, 0, 0, 0)
        for name in MORE_KNOBS:
            more.addRow(LABELS[name], self.knobs[name])
        more.addRow("Stop strings", self.stops)
        shape = QHBoxLayout()
        for label, spin in (("n", self.n_samples), ("best of", self.best_of), ("beams", self.beams)):
            shape.addWidget(QLabel(label))
            shape.addWidget(spin, 1)
        more.addRow("Samples", shape)
        form.addRow(self.more_box)
        self.more_box.hide()
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
        values["stop"] = self.stops.stops()
        kind, text = self.constraint_kind.currentData(), self.constraint_text.toPlainText()
        values["constraint_kind"], values["constraint"] = (kind, text) if kind and text.strip() else ("", "")
        return dataclasses.replace(self._extra, **values)

    def set_params(self, params: SamplingParams) -> None:
        self._quiet = True
        self._extra = params
        for name, knob in self.knobs.items():
            knob.set_value(getattr(params, name))
        self.random_seed.setChecked(params.seed is None)
        self.seed.setValue(params.seed or 0)
        self.stops.set_stops(params.stop)
        if params.constraint_kind or self.constraint_kind.currentData():  # keep a draft text while it is off
            self.constraint_kind.setCurrentIndex(max(self.constraint_kind.findData(params.constraint_kind), 0))
            self.constraint_text.setPlainText(params.constraint)
        self._quiet = False
        self._emit()

    def request_shape(self) -> dict:
        """GenerationRequest's n, best_of and beams: under beam search there is one result per beam and no
        sampling, so n and best-of are left out (their boxes keep their values for later)."""
        if self.beams.value():
            return dict(n=1, best_of=0, beams=self.beams.value())
        return dict(n=self.n_samples.value(), best_of=self.best_of.value(), beams=0)

    def set_request_shape(self, shape: dict) -> None:
        """n, best_of and beams (missing keys: 1, off, off), made valid: best-of is raised to n, and beams
        turn speculative decoding off (they do not combine)."""
        n, best_of, beams = max(1, int(shape.get("n", 1))), max(0, int(shape.get("best_of", 0))), \
            max(0, int(shape.get("beams", 0)))
        if beams and self.speculative_chosen():  # a typed drafter leaves the index alone: set the text too
            self.drafter.setCurrentIndex(0)
            self.drafter.setEditText(self.drafter.itemText(0))
        self._quiet = True
        self.n_samples.setValue(n)
        self.best_of.setValue(max(best_of, n) if best_of else 0)
        self.beams.setValue(beams)
        self._quiet = False
        self._shape_moved(n_moved=False)

    def speculative_chosen(self) -> bool:
        text = self.drafter.currentText().strip()
        return DRAFTERS.get(text, text) not in ("", "off")

    def speculative(self) -> SpeculativeOptions:
        text = self.drafter.currentText().strip()
        name = DRAFTERS.get(text, text)
        if name in ("", "off") or self.beams.value():  # beams win: the drafter box is disabled under them
            name = ""
        return SpeculativeOptions(name, self.spec_k.value(), self.spec_adaptive.isChecked())

    def set_tools_available(self, available: bool, model: str = "") -> None:
        """Tools can be offered only to a model whose chat template takes them: otherwise the box is
        disabled and its tooltip says why (its check is kept for the next model that does)."""
        self.offer_tools.setEnabled(available)
        self.offer_tools.setToolTip(TOOLS_TIP if available else
                                    f"Not available: the chat template of {model or 'this model'} takes no tools, "
                                    "so offering the calculator would change nothing")

    def preset_values(self) -> dict:
        """The values a preset keeps, as they are now (presets.PRESET_FIELDS)."""
        params = self.params()
        return {**{name: getattr(params, name) for name in SAMPLING_FIELDS}, **self.request_shape()}

    # -- reactions ------------------------------------------------------------------------------
    def _apply_preset_values(self, values: dict) -> None:
        params = {k: (tuple(v) if k == "stop" else v) for k, v in values.items() if k in SAMPLING_FIELDS}
        try:
            self.set_params(dataclasses.replace(self.params(), **params))
            self.set_request_shape({**self.request_shape(), **{k: v for k, v in values.items()
                                                                if k in ("n", "best_of", "beams")}})
        except (TypeError, ValueError):  # a damaged stored preset: leave the knobs as they are
            pass
        self.presets.track(self.preset_values())

    def _shape_moved(self, n_moved: bool) -> None:
        """Keep best-of >= n by moving the other box: raising n raises best-of, lowering best-of lowers n."""
        if self._quiet:
            return
        self._quiet = True
        n, best_of = self.n_samples.value(), self.best_of.value()
        if best_of and best_of < n:
            (self.best_of if n_moved else self.n_samples).setValue(n if n_moved else best_of)
        self._quiet = False
        self._apply_rules()
        self.shape_changed.emit(self.request_shape())
        self._emit_speculative()  # beams may have switched speculation off
        self.presets.track(self.preset_values())

    def _apply_rules(self) -> None:
        """Disable what does not apply: the sampling knobs, seed and samples under beam search; beams while a
        drafter is chosen (and the drafter under beams)."""
        beam = bool(self.beams.value())
        for name in SAMPLING_KNOBS:
            self.knobs[name].setEnabled(not beam)
        self.random_seed.setEnabled(not beam)
        self.seed.setEnabled(not beam and not self.random_seed.isChecked())
        for widget in (self.n_samples, self.best_of, self.drafter, self.spec_k, self.spec_adaptive):
            widget.setEnabled(not beam)
        blocked = self.speculative_chosen() and not beam
        self.beams.setEnabled(not blocked)
        self.beams.setToolTip(SPEC_BLOCKS_BEAMS if blocked else "Beam search width: keep the most likely "
                              "continuations instead of sampling")
        self.beam_note.setVisible(beam)
        self._update_more_title()

    def _show_more(self, shown: bool) -> None:
        self.more_box.setVisible(shown)
        self.more.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def _update_more_title(self) -> None:
        """Folded settings that are on are counted in the title, so a penalty is never on unseen."""
        params, defaults = self.params(), SamplingParams()
        on = [name for name in MORE_KNOBS if getattr(params, name) != getattr(defaults, name)]
        shape = self.request_shape()
        on += ["stop"] * bool(params.stop)
        on += [k for k, off in (("n", 1), ("best_of", 0), ("beams", 0)) if shape[k] != off]
        self.more.setText(f"More{f' ({len(on)} on)' if on else ''}: penalties, stops, samples")

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

    def _emit_speculative(self, *_) -> None:
        options = self.speculative()
        if options != self._last_speculative:  # a shape change that leaves it alone says nothing
            self._last_speculative = options
            self.speculative_changed.emit(options)

    def _emit(self, *_) -> None:
        if not self._quiet:
            self._update_more_title()
            self.presets.track(self.preset_values())
            self.params_changed.emit(self.params())
