"""A step's next-token distribution through every sampler stage, re-derived from its stored logits.

This is how the probabilities panel answers "what if temperature were 1.3?" without running the
model again: the step record kept the raw top-M logits, and the chain is pure.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.records import DistributionView, SamplingParams, StageView, StepRecord
from engine.sampling import run_chain_sparse


def distribution_view(record: StepRecord, params: SamplingParams, token_text: Callable[[int], str],
                      top_n: int = 20, history=()) -> DistributionView:
    if not record.logit_ids:
        raise ValueError("this step kept no logits (InstrumentOptions.stored_logits was 0)")
    ids = torch.tensor(record.logit_ids)
    logits = torch.tensor(record.logit_values, dtype=torch.float32)
    allowed = torch.tensor(record.logit_allowed, dtype=torch.bool) if record.logit_allowed else None  # constraint
    chain = run_chain_sparse(ids, logits, params, history, trace=True, allowed=allowed)
    raw = torch.softmax(logits, dim=-1)
    shown = torch.argsort(raw, descending=True)[:top_n]  # positions within the stored logits
    shown_ids = ids[shown]
    stages = []
    for stage in chain.stages:
        removed = set(stage.removed.tolist()) & set(shown_ids.tolist())
        stages.append(StageView(stage.name, stage.active, tuple(stage.probs[shown].tolist()),
                                tuple(sorted(removed))))
    final = chain.probs
    nonzero = final[final > 0]
    return DistributionView(
        step_index=record.index, chosen_token_id=record.token_id,
        token_ids=tuple(shown_ids.tolist()), token_texts=tuple(token_text(int(i)) for i in shown_ids),
        stages=tuple(stages), entropy=float(-(nonzero * nonzero.log()).sum()), top_p=params.top_p)
