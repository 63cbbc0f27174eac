"""Inspection results computed on request, not on every step: a step's distribution through the sampler
chain, what quantization changed, routing statistics."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StageView:
    """One sampler stage's effect: on the shown tokens (probs, removed) and, in counts and entropy, on the
    whole stored distribution (the step's top-M logits), with a one-line reason a person can read."""

    name: str  # "raw", "constraint", "penalties", "temperature", "top_k", "top_p", "min_p", "typical_p"
    active: bool
    probs: tuple[float, ...]  # after this stage, aligned with DistributionView.token_ids (0 = removed)
    removed: tuple[int, ...]  # token ids this stage removed (among the shown ones)
    reason: str = ""  # what the stage did and why: "top-k 5 kept 6 of 512: ranks 5 and 6 tie at p 0.031"
    entropy: float = 0.0  # of the distribution after this stage, over the stored tokens, nats
    kept: int = 0  # stored tokens still possible after this stage
    before: int = 0  # stored tokens still possible before it

    @property
    def num_removed(self) -> int:
        """How many stored tokens this stage removed (not only shown ones)."""
        return self.before - self.kept

    @property
    def label(self) -> str:
        """The stage as users know it: "top-k", "typical-p", "model"."""
        return "model" if self.name == "raw" else self.name.replace("_", "-")


@dataclass(frozen=True, slots=True)
class DistributionView:
    """One step's next-token distribution through the sampler chain, re-derivable from stored logits
    (engine/instrumentation/distribution.py builds it; the probabilities panel draws it). stages[0] is the
    model's own ("raw"), then every stage in the order the chain applies them, active or not."""

    step_index: int
    chosen_token_id: int
    token_ids: tuple[int, ...]  # the tokens shown, most likely first under the raw distribution
    token_texts: tuple[str, ...]
    stages: tuple[StageView, ...]
    entropy: float  # of the final distribution, nats
    top_p: float  # the nucleus threshold in force (1.0 = off), for the cumulative curve's line
    entropy_before: float = 0.0  # of the raw distribution, nats (both over the stored tokens)
    # The distribution entering top-p, sorted most likely first and summed: where it first reaches top_p is
    # where top-p cuts (top_p_kept tokens kept; more only when tokens tie with the last one).
    top_p_curve: tuple[float, ...] = ()
    top_p_kept: int = 0
    stored: int = 0  # how many logits the step stored (the counts' "of N")

    def stage(self, name: str) -> StageView | None:
        return next((s for s in self.stages if s.name == name), None)


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
    attends to position s under head h (each row sums to 1 over s <= its position, with its sink if any)."""

    layer: int
    query_start: int
    kv_group: tuple[int, ...]  # per query head, the KV head it reads (GQA)
    weights: "np.ndarray"  # float32 [H, Q, S]
    # attention sinks (gpt-oss): sinks[h, i] is the share query row i of head h gave to the head's learned
    # sink logit rather than to any position; None for models without sinks
    sinks: "np.ndarray | None" = None  # float32 [H, Q]
    # the layer's sliding window: a query at p sees positions p - window + 1 .. p only; None = every earlier one
    window: int | None = None

    @property
    def num_queries(self) -> int:
        return int(self.weights.shape[1])


# -- the model's own what-if: logit lens and interventions (engine/instrumentation/lens.py) -------------

INTERVENTION_KINDS = ("head", "expert", "mlp")


@dataclass(frozen=True, slots=True)
class Intervention:
    """One change to the model for a what-if: a query head's output, an MoE expert or a layer's whole MLP
    scaled by `scale` (0 = switched off). A head is scaled where its output enters the output projection;
    an expert switched off is removed from routing (the router picks among the others); scaled, its
    output is multiplied by `scale`."""

    kind: str  # "head" | "expert" | "mlp"
    layer: int
    index: int = 0  # the query head or the expert; ignored for "mlp"
    scale: float = 0.0

    def __post_init__(self):
        if self.kind not in INTERVENTION_KINDS:
            raise ValueError(f"unknown intervention {self.kind!r}; expected one of {INTERVENTION_KINDS}")
        if self.layer < 0 or self.index < 0 or self.scale < 0:
            raise ValueError("an intervention's layer, index and scale are >= 0")

    @property
    def label(self) -> str:
        """'layer 3 head 5 off', 'layer 2 expert 1 ×0.5', 'layer 7 MLP off'."""
        what = {"head": f"head {self.index}", "expert": f"expert {self.index}", "mlp": "MLP"}[self.kind]
        return f"layer {self.layer} {what} " + ("off" if self.scale == 0 else f"×{self.scale:g}")


@dataclass(frozen=True, slots=True, eq=False)
class LogitLensView:
    """Next-token predictions read from every layer's residual stream (after block l, through the final
    norm and the LM head), for the last few positions of a context; computed by replay. The last row
    (after the last block) is the model's own logits. Columns are positions; the last column is the
    context's last position, whose prediction is `target_id` (the selected token)."""

    positions: tuple[int, ...]  # columns: absolute positions in the context, ascending
    input_texts: tuple[str, ...]  # the token at each column's position (what that column reads)
    next_ids: tuple[int, ...]  # per column the token that actually came next (the last: target_id)
    target_id: int
    top_ids: "np.ndarray"  # int64 [L, P, N]: per layer row and column the N likeliest next tokens
    top_probs: "np.ndarray"  # float32 [L, P, N]
    next_probs: "np.ndarray"  # float32 [L, P]: each layer's probability of the token that came next
    texts: dict  # token id -> text, for every id in top_ids and next_ids
    interventions: tuple[Intervention, ...] = ()  # in force during the replay (empty: the model as loaded)

    @property
    def num_layers(self) -> int:
        return int(self.top_ids.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class InterventionView:
    """The selected token's next-token distribution with `interventions` applied against the model as
    loaded, both by replay of the same context, and the logit lens under the interventions."""

    interventions: tuple[Intervention, ...]
    target_id: int  # the token the model chose there
    token_ids: tuple[int, ...]  # the union of both top-N, ordered by the unmodified probability
    token_texts: tuple[str, ...]
    base_probs: tuple[float, ...]  # unmodified, aligned with token_ids
    probs: tuple[float, ...]  # with the interventions
    kl: float  # KL(unmodified ‖ intervened) over the whole vocabulary, nats
    top1_same: bool  # both rank the same token first
    lens: LogitLensView | None = None  # under the interventions


# -- quantization drift (engine/instrumentation/drift.py) ---------------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class QuantDriftView:
    """What quantization changed along a conversation (Engine.quant_drift): per scored position the KL
    divergence of the float model's next-token distribution from the quantized one's and whether both
    rank the same token first (the same numbers as Engine.quant_diff), and both models' top-N there."""

    start: int  # absolute position of the first scored prediction (column i predicts token start + i + 1)
    next_texts: tuple[str, ...]  # per column the token that came next
    kl: tuple[float, ...]
    top1_agree: tuple[bool, ...]
    mean_kl: float
    agreement: float
    float_top_ids: "np.ndarray"  # int64 [P, N]
    float_top_probs: "np.ndarray"  # float32 [P, N]
    quant_top_ids: "np.ndarray"  # int64 [P, N]
    quant_top_probs: "np.ndarray"  # float32 [P, N]
    texts: dict  # token id -> text for every id shown
    quantization: str  # what the loaded model's weights are ("Q4_1 + float32", from ModelFacts.weights)
    reference_dtype: str  # the float reference's dtype
    reference_bytes: int  # memory the float reference holds (loaded on first use, kept until released)


# -- RoPE (engine/instrumentation/rope_view.py) --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RopeView:
    """What a RoPE scaling does to each dimension pair's rotation, without a forward pass: the inverse
    frequencies (radians per position) under the scaling, beside the model's unscaled ones. Wavelength
    (positions per full turn) is 2π / inv_freq."""

    scaling: str  # "default" | "linear" | "dynamic" | "yarn" | "llama3" | "longrope"
    factor: float
    head_dim: int
    theta: float
    trained_context: int  # the context the model was trained for (original_max_position)
    context: int  # the context length the view is drawn for (dynamic NTK depends on it)
    inv_freq: tuple[float, ...]  # under the scaling, [head_dim/2], equal to the layer's inv_freq
    base_inv_freq: tuple[float, ...]  # unscaled
    attention_scaling: float  # what cos/sin are multiplied by (YaRN, LongRoPE), 1.0 otherwise
    # LongRoPE: the inverse frequencies with the other factor list than the one `context` selects (the long
    # ones while the context fits in trained_context, the short ones past it); () for every other scaling
    other_inv_freq: tuple[float, ...] = ()
    nope_layers: tuple[int, ...] = ()  # layers that skip RoPE altogether (SmolLM3's NoPE layers)
    head_width: int = 0  # the whole head when RoPE rotates only its first head_dim dims (partial rotary); 0 = same
    # layers that rotate with their own base and no scaling (Gemma 3's sliding-window layers); the curves are
    # the other layers'. () and 0 when every layer uses one table
    local_layers: tuple[int, ...] = ()
    local_theta: float = 0.0
