"""Logit lens and interventions by replay (stub: to be written)."""
from __future__ import annotations


def logit_lens(model, context_ids, target_id, token_text, columns, top_n, interventions, cancelled):
    raise NotImplementedError


def intervene(model, context_ids, target_id, token_text, interventions, top_n, columns, cancelled):
    raise NotImplementedError
