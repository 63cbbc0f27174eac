"""The conversation's step records, bounded by bytes. Every generated token's StepRecord is kept (the
transcript's tokens are clickable), but only the newest within HISTORY_BUDGET keep their heavy parts:
when the kept records' estimated size passes the budget, the OLDEST ones are replaced by light copies
(token id, text, probability, entropy and timing stay; top-N lists, stored logits, routing and any
attention rows go), so memory stays flat however long the conversation runs. A MemorySnapshot is kept
on the newest record only: the memory panel shows the latest one, older ones are history it drew.

GUI thread only: the chat controller owns the list and tells this class what it did to it.
"""
from __future__ import annotations

from array import array
from dataclasses import replace

from engine.records import StepRecord

# 64 MB: about 6,000 steps in full at the window's instrumentation (top-20 before and after the sampler,
# 512 stored logits: ~10 KB a step); a light record costs ~0.6 KB, so 100,000 tokens of conversation
# stay near 64 + 60 MB (tests/app/test_history.py measures the estimate against tracemalloc).
HISTORY_BUDGET = 64 << 20

# Rough CPython sizes (64-bit): what an object costs besides its payload.
RECORD = 280  # a StepRecord (slots) and its small fields
OBJECT = 64  # a small frozen record or tuple header
NUMBER = 32  # a float / int object and its pointer in a tuple
STRING = 50  # a str header (plus one byte per ASCII character)


def numbers_bytes(values) -> int:
    if isinstance(values, array):
        return OBJECT + values.itemsize * len(values)
    if hasattr(values, "nbytes"):  # numpy
        return OBJECT + int(values.nbytes)
    return OBJECT + NUMBER * len(values)


def record_bytes(r: StepRecord) -> int:
    """An estimate of what `r` holds in memory (its own payload; shared token-text strings counted)."""
    size = RECORD + STRING + len(r.text)
    for top in (r.top_before, r.top_after):
        size += OBJECT + sum(OBJECT + 2 * NUMBER + STRING + len(t.text) for t in top)
    size += numbers_bytes(r.logit_ids) + numbers_bytes(r.logit_values) + 8 * len(r.logit_allowed)
    for route in r.routing:
        size += OBJECT + numbers_bytes(route.expert_ids) + numbers_bytes(route.gate_weights) \
            + numbers_bytes(route.router_probs)
    size += sum(OBJECT + numbers_bytes(a.weights) for a in r.attention)
    if r.memory is not None:
        m = r.memory
        size += 400 + 8 * (len(m.block_refs) + len(m.cached_blocks)) \
            + sum(OBJECT + 8 * len(b) for b in m.block_tables.values())
    if r.spec is not None:
        size += OBJECT + len(r.spec.drafted) * (OBJECT + STRING + 3 * NUMBER)
    return size


def step_key(record: StepRecord) -> tuple[int, int, int]:
    """A step's identity across copies (a light copy, or the newest record without its snapshot)."""
    return record.request_id, record.seq_index, record.index


def lighten(r: StepRecord) -> StepRecord:
    """`r` without what a budget drops: the transcript and a click still have its token, text and probability."""
    return replace(r, top_before=(), top_after=(), logit_ids=(), logit_values=(), logit_allowed=(),
                   routing=(), attention=(), memory=None, spec=None)


class HistoryBudget:
    """Sizes of the records in the controller's list, and how many of the oldest are light already."""

    def __init__(self, budget: int = HISTORY_BUDGET):
        self.budget = budget
        self.sizes: list[int] = []
        self.total = 0
        self.light = 0  # steps[:light] were lightened (the oldest go first, so it is always a prefix)

    def added(self, steps: list[StepRecord]) -> None:
        """After `steps` grew at its end: drop older snapshots, then lighten the oldest while over budget."""
        first = len(self.sizes)
        for i in range(max(first - 1, 0), len(steps) - 1):  # only the newest record keeps its MemorySnapshot
            if steps[i].memory is not None:
                steps[i] = replace(steps[i], memory=None)
                if i < first:  # sized already, with its snapshot
                    self.total -= self.sizes[i]
                    self.sizes[i] = record_bytes(steps[i])
                    self.total += self.sizes[i]
        for r in steps[first:]:
            self.sizes.append(record_bytes(r))
            self.total += self.sizes[-1]
        while self.total > self.budget and self.light < len(steps) - 1:  # the newest always keeps its details
            i = self.light
            steps[i] = lighten(steps[i])
            self.total += record_bytes(steps[i]) - self.sizes[i]
            self.sizes[i] = record_bytes(steps[i])
            self.light += 1

    def reset(self) -> list[StepRecord]:
        """A new conversation (clear, open): the empty list of its steps."""
        self.sizes, self.total, self.light = [], 0, 0
        return []

    def truncated(self, steps: list[StepRecord]) -> None:
        """After records were deleted from the end of `steps` (a branch)."""
        del self.sizes[len(steps):]
        self.total = sum(self.sizes)
        self.light = min(self.light, len(steps))

    def is_light(self, index: int) -> bool:
        return 0 <= index < self.light

    def note(self, index: int, record: StepRecord) -> str:
        """What the window says when step `index` (`record`) is selected: why its details are missing."""
        if not self.is_light(index):
            return ""
        return (f"Step {record.index}: its alternatives and routing were dropped to keep the history "
                f"under {self.budget >> 20} MB")
