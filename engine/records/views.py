"""Inspection results computed on request, not on every step: a step's distribution through the sampler
chain, what quantization changed, routing statistics."""
from __future__ import annotations

from dataclasses import dataclass


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
    (engine/instrumentation/distribution.py builds it; the probabilities panel draws it)."""

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
    """One MoE layer's routing over a text (engine.moefy.router_stats): per expert the share of routing
    slots it received (fᵢ, sums to 1) and its mean router probability (Pᵢ), and the auxiliary
    load-balancing value N·Σ fᵢ·Pᵢ: 1.0 when balanced, up to N when every token goes to one expert."""
    layer: int
    tokens: int
    token_fraction: tuple[float, ...]
    mean_prob: tuple[float, ...]
    balance: float


@dataclass(frozen=True, slots=True, eq=False)
class AttentionView:
    """One layer's attention over a stretch of the conversation, computed on request by replay
    (engine/instrumentation/replay.py): weights[h, i, s] is how much query position query_start + i
    attends to position s under head h (each row sums to 1 over s <= its position)."""

    layer: int
    query_start: int
    kv_group: tuple[int, ...]  # per query head, the KV head it reads (GQA)
    weights: "np.ndarray"  # float32 [H, Q, S]

    @property
    def num_queries(self) -> int:
        return int(self.weights.shape[1])
