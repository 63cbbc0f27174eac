"""A step's next-token distribution through every sampler stage, re-derived from its stored logits, with
what each stage removed and why in words.

This is how the probabilities panel answers "what if temperature were 1.3?" without running the model
again: the step record kept the raw top-M logits, and the chain is pure. Counts and entropies are over
those M stored tokens (the panel shows only the first top_n); the chain itself lives in engine/sampling.py.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.records import DistributionView, SamplingParams, StageView, StepRecord
from engine.sampling import run_chain_sparse, token_counts

CONSTRAINT_KINDS = {"json_schema": "JSON schema", "regex": "regular expression", "grammar": "grammar"}


def distribution_view(record: StepRecord, params: SamplingParams, token_text: Callable[[int], str],
                      top_n: int = 20, history=()) -> DistributionView:
    """`history` is what the runner penalises: the prompt ids and the tokens generated before this step."""
    if not record.logit_ids:
        raise ValueError("this step kept no logits (InstrumentOptions.stored_logits was 0)")
    ids = torch.tensor(record.logit_ids)
    logits = torch.tensor(record.logit_values, dtype=torch.float32)
    allowed = torch.tensor(record.logit_allowed, dtype=torch.bool) if record.logit_allowed else None  # constraint
    chain = run_chain_sparse(ids, logits, params, history, trace=True, allowed=allowed)
    shown = torch.argsort(chain.stages[0].probs, descending=True)[:top_n]  # positions within the stored logits
    shown_ids = ids[shown]
    seen = _seen(ids, params, history)
    stages, before_probs, before = [], chain.stages[0].probs, int(torch.isfinite(logits).sum())
    top_p_input = before_probs
    for stage in chain.stages:
        kept = before - len(stage.removed)  # removed holds every stored id the stage cut, shown or not
        if stage.name == "top_p":
            top_p_input = before_probs
        reason = _reason(stage.name, stage.active, params, before_probs, stage.probs, kept, before,
                         seen=seen, shown=shown)
        removed = set(stage.removed.tolist()) & set(shown_ids.tolist())
        stages.append(StageView(stage.name, stage.active, tuple(stage.probs[shown].tolist()), tuple(sorted(removed)),
                                reason=reason, entropy=_entropy(stage.probs), kept=kept, before=before))
        before_probs, before = stage.probs, kept
    curve = _cumulative(top_p_input)
    top_p = next((s for s in stages if s.name == "top_p"), None)
    return DistributionView(
        step_index=record.index, chosen_token_id=record.token_id,
        token_ids=tuple(shown_ids.tolist()), token_texts=tuple(token_text(int(i)) for i in shown_ids),
        stages=tuple(stages), entropy=_entropy(chain.probs), top_p=params.top_p,
        entropy_before=stages[0].entropy, top_p_curve=tuple(curve.tolist()),
        top_p_kept=top_p.kept if top_p is not None and top_p.active else len(curve), stored=int(ids.numel()))


def _entropy(probs: torch.Tensor) -> float:
    return max(0.0, float(torch.special.entr(probs).sum()))  # 0 log 0 = 0; a certain step is 0, not -0.0


def _cumulative(probs: torch.Tensor) -> torch.Tensor:
    """Most likely first, summed, over the tokens still possible [K]."""
    ordered = torch.sort(probs, descending=True).values
    return torch.cumsum(ordered[ordered > 0], dim=0)


def _seen(ids: torch.Tensor, params: SamplingParams, history) -> torch.Tensor | None:
    """Per stored token, whether the history holds it (what the penalties act on); None when they are off."""
    if not params.penalised or len(history) == 0:
        return None
    return token_counts(history, int(ids.max()) + 1)[ids] > 0


def _p(x: float) -> str:
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _tokens(n: int) -> str:
    return "1 token" if n == 1 else f"{n} tokens"


def _reason(name: str, active: bool, params: SamplingParams, before_probs: torch.Tensor, probs: torch.Tensor,
            kept: int, before: int, *, seen: torch.Tensor | None, shown: torch.Tensor) -> str:
    """One line saying what the stage did to this step and why; probabilities are the stage's input's."""
    if name == "raw":
        return f"model: its own distribution over the {before} stored tokens"
    if name == "penalties":
        return _penalties(params, active, seen, shown)
    if not active:
        return f"{name.replace('_', '-')}: off"
    of = f"kept {kept} of {before}"
    if name == "constraint":
        kind = CONSTRAINT_KINDS.get(params.constraint_kind, "constraint")
        return f"constraint: the {kind} allows {kept} of {before} tokens, removed {before - kept}"
    if name == "temperature":
        t = params.temperature
        if t == 0.0:
            return f"temperature 0 (greedy): only the most likely token stays, {of}"
        change = "sharpens" if t < 1.0 else "flattens"
        return f"temperature {t:g} {change}: entropy {_entropy(before_probs):.2f} → {_entropy(probs):.2f} nats"
    ordered = torch.sort(before_probs, descending=True).values
    if name == "top_k":
        k = params.top_k
        if kept == before:
            return f"top-k {k}: only {_tokens(before)} left, none removed"
        if kept == k:
            return f"top-k {k} {of}"
        tie = float(ordered[k - 1])  # the k-th probability; every token equal to it is kept
        first = int((ordered > tie).sum()) + 1
        ranks = f"ranks {first} and {kept}" if kept - first == 1 else f"ranks {first}–{kept}"
        return f"top-k {k} {of}: {ranks} tie at {_p(tie)}"
    if name == "top_p":
        cumulative = torch.cumsum(ordered, dim=0)
        reach = min(int((cumulative < params.top_p).sum()) + 1, kept)
        first = "the most likely token reaches" if reach == 1 else f"the first {reach} tokens reach"
        ties = f" (+{kept - reach} tied with the last)" if kept > reach else ""
        return f"top-p {params.top_p:g}: {first} {float(cumulative[reach - 1]):.2f}; {of}{ties}"
    if name == "min_p":
        top = float(ordered[0])
        return f"min-p {params.min_p:g}: removed below {params.min_p:g} × {_p(top)} = {_p(params.min_p * top)}; {of}"
    if name == "typical_p":
        dropped_top = bool(probs[int(before_probs.argmax())] == 0)
        return (f"typical-p {params.typical_p:g}: {of} nearest in surprisal to the entropy "
                f"{_entropy(before_probs):.2f} nats" + (", not the most likely" if dropped_top else ""))
    return f"{name}: {of}"


def _penalties(params: SamplingParams, active: bool, seen: torch.Tensor | None, shown: torch.Tensor) -> str:
    if not params.penalised:
        return "penalties: off"
    if not active or seen is None:
        return "penalties: no token history to penalise"
    parts = [f"×{params.repetition_penalty:g}" if params.repetition_penalty != 1.0 else "",
             f"presence −{params.presence_penalty:g}" if params.presence_penalty else "",
             f"frequency −{params.frequency_penalty:g} per use" if params.frequency_penalty else ""]
    n_shown, n_stored = int(seen[shown].sum()), int(seen.sum())
    return (f"penalties {', '.join(p for p in parts if p)}: {_tokens(n_shown).replace('token', 'shown token')} "
            f"seen before ({n_stored} stored)")
