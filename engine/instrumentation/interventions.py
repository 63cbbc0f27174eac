"""Interventions as hooks on the model (stub: to be written)."""
from __future__ import annotations


def install_interventions(model, interventions):
    raise NotImplementedError
