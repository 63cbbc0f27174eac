"""Quantization drift along a conversation (stub: to be written)."""
from __future__ import annotations


def quant_drift(engine, token_ids, top_n, cancelled):
    raise NotImplementedError
