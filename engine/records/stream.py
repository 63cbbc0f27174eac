"""What the engine streams back while it generates: one StepRecord per token, one RequestDone per request
(and the simple one-request stream's TokenStep / GenerationDone)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """A request's prompt as the model sees it, sent before its first step: the ids and each token's
    text (for attention axes and for branching a reply later without asking the engine again)."""

    request_id: int
    token_ids: tuple[int, ...]
    token_texts: tuple[str, ...]


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
    """One head's attention from the newest token over every earlier position (with `sink`, sums to 1)."""

    layer: int
    head: int
    kv_head: int  # the GQA group this query head reads from
    weights: tuple[float, ...]
    sink: float = 0.0  # the share an attention sink (gpt-oss) took, which no position received


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
    sequence_tokens: dict = field(default_factory=dict)  # "request.sample" -> tokens whose K/V its blocks hold
    prefix_hits: dict = field(default_factory=dict)  # "request.sample" -> its leading blocks the prefix cache served
    prefix_blocks: tuple[int, ...] = ()  # held blocks the prefix cache indexes (a later prompt starting so reuses them)
    # Speculative decoding with a draft model: its own KV pool (a separate cache, not blocks of this map).
    draft_blocks_used: int = 0
    draft_blocks_total: int = 0
    draft_bytes_per_block: int = 0
    # Multi-head latent attention (DeepSeek-V2): values a token and layer the cache stores (its latent and
    # RoPE key), and what per-head K and V of the same attention would store; 0, 0 for other architectures.
    kv_latent_values: int = 0
    kv_per_head_values: int = 0
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
    top_after: tuple[TokenProb, ...] = ()  # after the sampler chain: the top-N it left any probability
    # Stored raw logits (ids and values) for re-sampling what-ifs: array("i") / array("f") from the engine
    # (compact: 4 bytes a number), or any sequence of numbers.
    logit_ids: Sequence[int] = ()
    logit_values: Sequence[float] = ()
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
