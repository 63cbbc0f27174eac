"""RoPE per dimension pair under a scaling (stub: to be written)."""
from __future__ import annotations


def rope_view(engine, rope_spec, context):
    raise NotImplementedError
