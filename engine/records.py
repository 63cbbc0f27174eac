"""The plain-data boundary between the engine and everything else (CLI, GUI, tests).

Only dataclasses of Python values here: no torch tensors and no Qt, so a widget can import
this module without pulling in torch.
"""
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
    # Structured output (engine/constraints.py): only tokens that keep the output valid may be drawn.
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


@dataclass(frozen=True, slots=True)
class TokenProb:
    token_id: int
    text: str
    prob: float


@dataclass(frozen=True, slots=True)
class RoutingRecord:
    """One MoE layer's decision for one token."""

    layer: int
    expert_ids: tuple[int, ...]  # the k experts chosen, best first
    gate_weights: tuple[float, ...]  # their mixing weights
    router_probs: tuple[float, ...]  # softmax over all experts


@dataclass(frozen=True, slots=True)
class AttentionRecord:
    """One head's attention from the newest token over every earlier position (sums to 1)."""

    layer: int
    head: int
    kv_head: int  # the GQA group this query head reads from
    weights: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_blocks_shared: int = 0
    kv_blocks_cached_free: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0
    kv_bytes_per_block: int = 0
    kv_tokens: int = 0  # tokens whose K/V the live sequences hold (a shared prefix counts for each sharer)
    kv_slots_filled: int = 0  # slots physically holding K/V (a shared prefix counts once)
    kv_contiguous_bytes: int = 0  # what max-length contiguous caches would reserve for the same sequences
    block_tables: dict = field(default_factory=dict)  # "request.sample" -> tuple of block ids
    block_refs: tuple[int, ...] = ()  # per block: how many sequences hold it (0 = free or cached)
    cached_blocks: tuple[int, ...] = ()  # unreferenced blocks that still hold a reusable prefix
    weight_bytes: dict = field(default_factory=dict)  # dtype name -> bytes
    process_rss: int = 0
    cuda_allocated: int = 0
    cuda_reserved: int = 0

    @property
    def kv_used_bytes(self) -> int:
        return self.kv_blocks_used * self.kv_bytes_per_block

    @property
    def kv_waste_pct(self) -> float:
        """Slots allocated but not holding a token, as a share of the KV memory in use."""
        used = self.kv_used_bytes
        stored = self.kv_slots_filled * self.kv_bytes_per_block // max(self.kv_block_size, 1)
        return 100.0 * (used - stored) / used if used else 0.0


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
    """Speculative decoding for a request (engine/speculative.py); off while drafter is ""."""

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
class DraftToken:
    """One drafted token and the target's verdict on it."""

    token_id: int
    text: str
    accepted: bool
    p_draft: float  # probability the drafter gave it (1.0 for a deterministic drafter such as n-gram lookup)
    p_target: float  # probability under the target's sampling distribution (the same sampler chain)


@dataclass(frozen=True, slots=True)
class SpecStep:
    """One speculative step: k drafted tokens, one target forward. Running figures cover the sequence so far."""

    drafter: str
    drafted: tuple[DraftToken, ...]  # in order; those after the first rejection were never judged
    accepted: int  # drafted tokens kept
    tokens_per_forward: int  # tokens this target forward produced: accepted + 1 (resampled or bonus)
    acceptance_rate: float  # running: accepted / drafted
    acceptance_by_position: tuple[float, ...]  # running, per draft position 0..k-1
    mean_accepted: float  # running mean accepted length per step
    speedup: float  # running measured tokens/s vs plain decoding steps of the same sequence (0 = not yet known)
    draft_ms: float = 0.0
    verify_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class StepRecord:
    """Everything the panels draw for one generated token."""

    request_id: int
    index: int  # 0 for the first generated token
    token_id: int
    text: str
    prob: float
    seq_index: int = 0  # which of the request's samples / beams
    entropy: float = 0.0  # of the sampling distribution, in nats
    top_before: tuple[TokenProb, ...] = ()  # the model's raw distribution
    top_after: tuple[TokenProb, ...] = ()  # after the sampler chain
    logit_ids: tuple[int, ...] = ()  # stored raw logits (ids and values) for re-sampling what-ifs
    logit_values: tuple[float, ...] = ()
    logit_allowed: tuple[bool, ...] = ()  # structured output: per stored logit, did the constraint allow it
    routing: tuple[RoutingRecord, ...] = ()
    attention: tuple[AttentionRecord, ...] = ()
    step_ms: float = 0.0
    memory: MemorySnapshot | None = None
    # Speculative decoding: "accepted" (a drafted token the target kept), "resampled" (drawn from the residual
    # after a rejection), "bonus" (the target's extra token after all k were kept), "" (plain decoding).
    spec_role: str = ""
    spec: SpecStep | None = None  # on the last token of each speculative step


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


@dataclass(frozen=True, slots=True)
class SequenceResult:
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    mean_logprob: float


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A request's end: its results (best first for best-of and beams), or the error that ended it."""

    request_id: int
    results: tuple[SequenceResult, ...]
    prompt_tokens: int
    cached_prompt_tokens: int  # served from the prefix cache, not computed
    prefill_ms: float
    decode_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StageView:
    """One sampler stage's effect on the shown tokens."""

    name: str  # "raw", "penalties", "temperature", "top_k", "top_p", "min_p", "typical_p"
    active: bool
    probs: tuple[float, ...]  # after this stage, aligned with DistributionView.token_ids (0 = removed)
    removed: tuple[int, ...]  # token ids this stage removed (among the shown ones)


@dataclass(frozen=True, slots=True)
class DistributionView:
    """One step's next-token distribution through the sampler chain, re-derivable from stored logits
    (engine/sampling_view.py builds it; the probabilities panel draws it)."""

    step_index: int
    chosen_token_id: int
    token_ids: tuple[int, ...]  # the tokens shown, most likely first under the raw distribution
    token_texts: tuple[str, ...]
    stages: tuple[StageView, ...]
    entropy: float  # of the final distribution, nats
    top_p: float  # the nucleus threshold in force (1.0 = off), for the cumulative curve's line


@dataclass(frozen=True, slots=True)
class QuantDiff:
    """What quantization changed on one token sequence (engine.quality.compare / Engine.quant_diff):
    per scored token the KL divergence of the float model's next-token distribution from the
    quantized model's, and whether both rank the same token first."""
    kl: tuple[float, ...]
    top1_agree: tuple[bool, ...]
    mean_kl: float
    agreement: float


@dataclass(frozen=True, slots=True)
class RouterStats:
    """One MoE layer's routing over a text (engine.router_stats): per expert the share of routing
    slots it received (fᵢ, sums to 1) and its mean router probability (Pᵢ), and the auxiliary
    load-balancing value N·Σ fᵢ·Pᵢ: 1.0 when balanced, up to N when every token goes to one expert."""
    layer: int
    tokens: int
    token_fraction: tuple[float, ...]
    mean_prob: tuple[float, ...]
    balance: float
