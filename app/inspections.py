"""The panels whose views the engine computes on request (EngineWorker.request_inspection): the logit lens,
the interventions' what-if, quantization drift and RoPE. GUI thread.

One rule for all: a view is asked for only while its panel is on screen (a hidden panel costs nothing;
showing it asks again), only when what it would show changed (`wanted` differs from what was asked), and
the heavy ones (a replay of the conversation) not for every token of a streaming reply: they follow a
token the user selects, and the newest token when a reply ends. Only the answer to the latest request
is drawn; the worker drops older ones and stops their replays.

The selected token's context (its prompt and the tokens before it) comes from RequestContexts
(app/contexts.py), so nothing here asks the engine for ids."""
from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QTimer

from app.contexts import RequestContexts
from app.visibility import on_screen, when_shown
from engine.records import ModelFacts, StepRecord

LENS_TOP_N = 5
WHAT_IF_TOP_N = 10
ADAPTER_TOP_N = 8
DRIFT_TOP_N = 5


class OnDemand(QObject):
    """Asks the worker for `kind` when the panel is visible and `wanted()` changed; draws the answer."""

    kind = ""

    def __init__(self, worker, panel, parent=None):
        super().__init__(parent)
        self.worker, self.panel = worker, panel
        self.asked: tuple | None = None
        self.generation = -1
        panel.installEventFilter(self)
        when_shown(panel, self.refresh)  # its tab brought to the front
        worker.inspected.connect(self.on_inspected)  # a GUI-thread slot: delivered queued

    def wanted(self) -> tuple | None:
        """The arguments of the view the panel should show now; None: nothing to ask."""
        raise NotImplementedError

    def eventFilter(self, watched, event) -> bool:
        if watched is self.panel and event.type() == QEvent.Show:
            QTimer.singleShot(0, self.refresh)  # after the show: isVisible() is true by then
        return False

    def refresh(self, *_) -> None:
        if not on_screen(self.panel):
            return
        wanted = self.wanted()
        if wanted is None or wanted == self.asked:
            return
        self.asked = wanted
        self.panel.show_computing()
        self.generation = self.worker.request_inspection(self.kind, wanted)

    def forget(self) -> None:
        """What was shown no longer holds (a new model): the next refresh asks again."""
        self.asked, self.generation = None, -1

    def on_inspected(self, kind: str, view, generation: int) -> None:
        if kind != self.kind or generation != self.generation:
            return
        if isinstance(view, str):
            self.panel.show_problem(view)
        else:
            self.panel.show_view(view)


class SelectedTokenInspection(OnDemand):
    """A view of the selected token, computed by replaying its context: follows a click at once, the
    newest token of a streaming reply only when the reply ends."""

    def __init__(self, worker, panel, contexts: RequestContexts, interventions, parent=None):
        super().__init__(worker, panel, parent)
        self.contexts = contexts
        self.interventions = interventions  # () -> the what-if's interventions (the interventions panel)
        self.selected: StepRecord | None = None

    def select(self, record: StepRecord, following: bool) -> None:
        self.selected = record
        if not following:
            self.refresh()

    def context(self) -> tuple[tuple[int, ...], int] | None:
        if self.selected is None:
            return None
        before = self.contexts.before(self.selected)
        if before is None or not before[0]:
            return None
        return before[0], self.selected.token_id


class LensInspection(SelectedTokenInspection):
    kind = "lens"

    def wanted(self):
        context = self.context()
        if context is None:
            return None
        return (*context, self.panel.columns(), LENS_TOP_N, tuple(self.interventions()))


class InterventionInspection(SelectedTokenInspection):
    kind = "intervention"

    def wanted(self):
        context, interventions = self.context(), tuple(self.interventions())
        if context is None or not interventions:
            return None
        return (*context, interventions, WHAT_IF_TOP_N)


class AdapterInspection(SelectedTokenInspection):
    """The selected token without and with the LoRA adapters on now (app/adapters.py says when they change:
    forget() then refresh(), since the same token is then another comparison)."""

    kind = "adapter"

    def __init__(self, worker, panel, contexts: RequestContexts, parent=None):
        super().__init__(worker, panel, contexts, lambda: (), parent)

    def wanted(self):
        context = self.context()
        if context is None or not self.panel.any_enabled():  # the engine's last word on its adapters
            return None
        return (*context, ADAPTER_TOP_N)


class DriftInspection(OnDemand):
    """Quantization drift over the conversation. The float reference it needs costs the float weights'
    memory, so nothing is computed until the user asks (the panel's Compute); after that the view follows
    the conversation as replies end, until the reference is released."""

    kind = "drift"

    def __init__(self, worker, panel, contexts: RequestContexts, parent=None):
        super().__init__(worker, panel, parent)
        self.contexts = contexts
        self.enabled = False
        panel.compute_requested.connect(self.compute)
        panel.release_requested.connect(self.release)

    def wanted(self):
        ids, _ = self.contexts.latest()
        return (ids, DRIFT_TOP_N) if self.enabled and len(ids) >= 2 else None

    def compute(self) -> None:
        self.enabled = True
        if self.wanted() is None:
            self.panel.show_problem("Chat first: drift is measured over the conversation's tokens.")
        self.refresh()

    def release(self) -> None:
        self.enabled = False
        self.forget()
        self.worker.request_release_reference()
        self.panel.clear()

    def model_loaded(self, facts: ModelFacts) -> None:
        """A new model: the old reference went with the old engine."""
        self.enabled = False
        self.forget()
        self.panel.clear()
        kinds = {kind for kind, n in facts.weight_bytes if n > 0}
        self.panel.set_not_quantized(kinds <= {"float32", "bfloat16", "float16"})


class RopeInspection(OnDemand):
    """What the model panel's RoPE choice does to each dimension pair: cheap (no forward pass), asked
    when the choice changes or a model loads, while the panel is on screen."""

    kind = "rope"

    def __init__(self, worker, panel, rope_spec, parent=None):
        super().__init__(worker, panel, parent)
        self.rope_spec = rope_spec  # () -> 'TYPE:FACTOR' or None (the model's own)
        self.loaded = False
        self.loaded_rope = ""  # the loaded model's own scaling (ModelFacts.rope)

    def wanted(self):
        if not self.loaded:
            return None
        spec = self.rope_spec()
        self.panel.set_preview("" if spec is None else
                               f"Preview of {spec.replace(':', ' ×')}: it applies when a model is opened "
                               f"(Model panel → Open); the loaded model runs “{self.loaded_rope}”.")
        return spec, 0


class Inspections(QObject):
    """The four on-demand panels, fed by the record hub (selection, a reply's end) and the window (a new
    model, the RoPE choice, the interventions)."""

    def __init__(self, worker, contexts: RequestContexts, lens, intervention, drift, rope, rope_spec,
                 parent=None, adapters=None):
        super().__init__(parent)
        self.worker, self.intervention_panel = worker, intervention
        self.lens = LensInspection(worker, lens, contexts, intervention.interventions, self)
        self.what_if = InterventionInspection(worker, intervention, contexts, intervention.interventions, self)
        self.drift = DriftInspection(worker, drift, contexts, self)
        self.rope = RopeInspection(worker, rope, rope_spec, self)
        # The LoRA comparison (None: a window without the adapter panel)
        self.adapters = AdapterInspection(worker, adapters, contexts, self) if adapters is not None else None
        lens.wanted.connect(self.lens.refresh)
        intervention.changed.connect(self.interventions_changed)
        intervention.keep_changed.connect(self.interventions_changed)

    def select(self, record: StepRecord, following: bool = False) -> None:
        self.lens.select(record, following)
        self.what_if.select(record, following)
        if self.adapters is not None:
            self.adapters.select(record, following)

    def reply_done(self) -> None:
        for inspection in (self.lens, self.what_if, self.drift, self.adapters):
            if inspection is not None:
                inspection.refresh()

    def interventions_changed(self, *_) -> None:
        """The what-if and the lens under it are asked again; generation keeps them only if kept on."""
        panel = self.intervention_panel
        interventions = panel.interventions()
        self.worker.request_interventions(interventions if panel.keep_on() else ())
        if not interventions:
            panel.clear_result()
            self.what_if.forget()
        self.what_if.refresh()
        self.lens.refresh()

    def new_turn(self) -> None:
        """A message was sent. Interventions not kept on never reach generation (the worker is told only
        of kept ones), and the list stays in the panel for the new reply's what-if: clearing it silently
        threw away what the user had built (review of issue 19)."""

    def model_loaded(self, facts: ModelFacts) -> None:
        for inspection in (self.lens, self.what_if, self.rope):
            inspection.forget()
        self.lens.panel.clear()
        self.rope.panel.clear()
        self.intervention_panel.clear_result()
        self.lens.selected = self.what_if.selected = None
        if self.adapters is not None:
            self.adapters.forget()
            self.adapters.selected = None
        self.intervention_panel.set_model_shape(facts.layers, facts.heads, facts.kv_heads, facts.experts)
        self.drift.model_loaded(facts)
        self.rope.loaded, self.rope.loaded_rope = True, facts.rope
        self.rope.refresh()

    def rope_changed(self, *_) -> None:
        self.rope.refresh()
