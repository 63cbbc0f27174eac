"""The plain-data boundary between the engine and everything else (CLI, GUI, tests).

Only dataclasses of Python values here: no torch tensors and no Qt, so a widget can import
this module without pulling in torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True, slots=True)
class TokenStep:
    """One generated token as the stream reports it."""

    index: int  # 0 for the first generated token
    token_id: int
    text: str  # newly completed text (may be "" while a UTF-8 character is still incomplete)
    prob: float  # probability of the chosen token under the sampling distribution


@dataclass(frozen=True, slots=True)
class GenerationDone:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str  # "eos" | "length" | "stop" | "cancelled" | "context_full"
    prefill_ms: float
    decode_ms: float
    stats: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.token_ids) - 1, 0)  # the first token comes out of prefill
        return n / (self.decode_ms / 1000) if self.decode_ms > 0 and n else 0.0
