"""What a caller asks of the engine: sampler knobs, what to record per step, speculative decoding, a request."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Knobs of the sampler chain; each field's "off" value is noted. engine/sampling.py applies them in
    HF's order: penalties, temperature, top-k, top-p, min-p, typical-p."""

    temperature: float = 0.7  # 0 means greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past EOS (benchmarks want a fixed token count)
    # Penalties look at the token history (prompt + generated ids) the caller passes to the sampler.
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages seen tokens (CTRL/HF: logit / p if > 0 else * p)
    presence_penalty: float = 0.0  # 0 = off; subtracted once from every seen token's logit (OpenAI)
    frequency_penalty: float = 0.0  # 0 = off; subtracted once per occurrence (OpenAI)
    typical_p: float = 1.0  # 1 = off; locally typical sampling mass (Meister et al. 2022)
    # Structured output (engine/text/constraints.py): only tokens that keep the output valid may be drawn.
    # Plain strings so settings and saved conversations store them like any other knob.
    constraint_kind: str = ""  # "" = off; "json_schema" | "regex" | "grammar" (Lark or GBNF)
    constraint: str = ""  # the schema as JSON text, the regular expression, or the grammar

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        # Written as `not <in range>` so that NaN, which fails every comparison, is rejected too.
        if not 0.0 < self.repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:  # OpenAI's documented range; beyond it text degenerates fast
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if not 0.0 < self.typical_p <= 1.0:
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if self.constraint_kind not in ("", "json_schema", "regex", "grammar"):
            raise ValueError(f"constraint_kind must be '', json_schema, regex or grammar, got {self.constraint_kind!r}")
        if self.constraint_kind and not self.constraint.strip():
            raise ValueError(f"a {self.constraint_kind} constraint needs its text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalised(self) -> bool:
        """Whether any penalty is on, i.e. whether the sampler needs the token history at all."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True, slots=True)
class InstrumentOptions:
    """What to collect per step. All off costs nothing: the model runs its fused path."""

    top_n: int = 0  # top-N tokens before/after the sampler (0 = off)
    stored_logits: int = 0  # keep the top-M raw logits for what-if re-sampling (0 = off, -1 = all)
    routing: bool = False
    attention_layers: tuple[int, ...] = ()
    attention_heads: tuple[int, ...] = ()  # empty = every head of the chosen layers
    memory: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.top_n or self.stored_logits or self.routing or self.attention_layers or self.memory)


@dataclass(frozen=True, slots=True)
class SpeculativeOptions:
    """Speculative decoding for a request (engine/runtime/speculative.py); off while drafter is ""."""

    drafter: str = ""  # "" = off | "ngram" | "self-layers:L" | "self-int4" | path of a model sharing the tokenizer
    k: int = 4  # lookahead: tokens drafted per step
    adaptive: bool = False  # move k between 1 and 2k with the acceptance (+1 when all are accepted, -1 when not)

    def __post_init__(self):
        if not 1 <= self.k <= 32:
            raise ValueError(f"spec k must be in [1, 32], got {self.k}")

    @property
    def enabled(self) -> bool:
        return bool(self.drafter)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1  # parallel samples sharing the prompt's KV blocks
    best_of: int = 0  # sample this many, report the one with the best mean log-probability (0 = off)
    beams: int = 0  # beam search width (0 = off; greedy beams, no sampling)
    instrument: InstrumentOptions = field(default_factory=InstrumentOptions)
    speculative: SpeculativeOptions = field(default_factory=SpeculativeOptions)

    def __post_init__(self):
        if self.n < 1 or self.best_of < 0 or self.beams < 0:
            raise ValueError("n must be >= 1; best_of and beams must be >= 0")
        if self.beams and self.speculative.enabled:
            raise ValueError("speculative decoding samples; it does not combine with beam search")
        if self.best_of and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")

    @property
    def num_samples(self) -> int:
        return self.beams or max(self.n, self.best_of)
