"""Turning logits into a next token: the sampler chain as pure functions over tensors, no state.

Owns the penalties, temperature and truncation filters, the traced chain a panel draws stage by stage,
and the draw itself. It does not own the token history or the random generator: callers pass both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.records import SamplingParams

NEG_INF = float("-inf")

# The order is HF transformers' (`_get_logits_processor`): the repetition penalty (a "processor") first, then
# the warpers temperature, top-k, top-p, min-p, typical-p, so HF's processors can serve as the reference.
# Order matters: temperature comes before top-p, min-p and typical-p, so a hotter temperature widens what they
# keep (top-k alone is blind to it). llama.cpp applies temperature last by default and differs for that reason.
# Presence/frequency penalties are not in HF; like vLLM and llama.cpp we apply them right after the repetition
# penalty. "raw" is the model's own distribution, traced so a panel can show what the chain changed.
STAGES = ("raw", "penalties", "temperature", "top_k", "top_p", "min_p", "typical_p")
# Structured output (engine/text/constraints.py) adds one stage right after "raw", only when a constraint is on:
# the grammar's mask goes first so every later filter works on valid tokens only (top-k/top-p applied
# before it could leave no valid token at all), as llama.cpp's grammar sampler and vLLM's do.
CONSTRAINT = "constraint"

History = Sequence[int] | torch.Tensor  # prompt + generated ids; a tensor on the logits' device avoids a copy


def token_counts(history: History, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """How often each id in [0, size) occurs in history, as floats [size]. Other ids are ignored, as HF
    does: an embedding table may be larger than the lm_head, and those ids can never be sampled."""
    ids = torch.as_tensor(history, dtype=torch.long, device=device).reshape(-1)
    # Route out-of-range ids to a spare slot instead of masking them away: a data-dependent shape
    # would force a CUDA sync.
    ids = torch.where((ids >= 0) & (ids < size), ids, size)
    counts = torch.zeros(size + 1, device=device).index_add_(0, ids, torch.ones(ids.shape, device=device))
    return counts[:size]


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, repetition: float = 1.0,
                    presence: float = 0.0, frequency: float = 0.0) -> torch.Tensor:
    """CTRL/HF repetition penalty on every seen token, once however often it was seen, then OpenAI's
    additive penalties: presence once per seen token, frequency once per occurrence."""
    seen = counts > 0
    if repetition != 1.0:
        # Dividing a negative logit would *raise* it, hence the sign split (Keskar et al. 2019).
        penalised = torch.where(logits < 0, logits * repetition, logits / repetition)
        logits = torch.where(seen, penalised, logits)
    return logits - frequency * counts - presence * seen.to(logits.dtype)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature. 0 is the greedy limit: only the argmax survives (the lowest id on ties,
    as torch.argmax picks), so the traced chain ends on the token greedy sampling returns."""
    if temperature == 0.0:
        top = logits.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, NEG_INF).scatter(-1, top, logits.gather(-1, top))
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits (ties at the k-th value are kept too, as in HF); k <= 0 disables."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2020): keep the most likely tokens until their mass reaches p.

    Tokens tied with the last one kept are kept too, so a token's fate depends only on its logit, as in
    every other filter here. HF's TopPLogitsWarper instead breaks such exact ties by sort order.
    """
    if p >= 1.0:
        return logits
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values
    cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    # Token i is kept while the mass before it is < p; counting (rather than a mask over positions) stays
    # right even if a parallel cumsum is not exactly monotone. The +1 is the token that crosses p.
    n_keep = ((cum < p).sum(dim=-1, keepdim=True) + 1).clamp(max=logits.shape[-1])
    return logits.masked_fill(logits < sorted_logits.gather(-1, n_keep - 1), NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's (ties with it included)."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < threshold, NEG_INF)


def typical_filter(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022): rank tokens by how far their surprisal -log p lies
    from the entropy, and keep the closest until their mass reaches `mass`. Unlike the other filters it
    can drop the most likely token. Ties with the last kept token are kept, as in HF."""
    if mass >= 1.0:
        return logits
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, 0.0).sum(dim=-1, keepdim=True)  # 0 log 0 = 0, not NaN
    gap = (-logp - entropy).abs()  # inf for tokens already removed, so they sort last
    sorted_gap, order = torch.sort(gap, dim=-1)
    cum = torch.cumsum(p.gather(-1, order), dim=-1)
    n_keep = ((cum < mass).sum(dim=-1, keepdim=True) + 1).clamp(max=logits.shape[-1])
    return logits.masked_fill(gap > sorted_gap.gather(-1, n_keep - 1), NEG_INF)


@dataclass(frozen=True)
class StageTrace:
    name: str  # one of STAGES, or CONSTRAINT
    active: bool  # False when the params switch the stage off; it then changed nothing
    probs: torch.Tensor  # [N] the distribution after this stage
    removed: torch.Tensor  # [R] vocabulary ids this stage set to -inf (finite before it), ascending


@dataclass(frozen=True)
class ChainResult:
    logits: torch.Tensor  # [N] after every stage; -inf marks excluded tokens
    ids: torch.Tensor | None = None  # [N] vocabulary id of each entry; None when entry i is token i
    stages: tuple[StageTrace, ...] = ()  # one per STAGES name (+ CONSTRAINT if masked), filled only when traced

    @property
    def probs(self) -> torch.Tensor:
        """The sampling distribution [N]."""
        return torch.softmax(self.logits, dim=-1)

    def stage(self, name: str) -> StageTrace:
        return next(s for s in self.stages if s.name == name)


def _steps(params: SamplingParams, counts: torch.Tensor | None, allowed: torch.Tensor | None = None):
    """The chain after "raw" as (name, active, function) in application order."""
    constraint = ((CONSTRAINT, True, lambda x: x.masked_fill(~allowed, NEG_INF)),) if allowed is not None else ()
    return constraint + (
        ("penalties", counts is not None, lambda x: apply_penalties(
            x, counts, params.repetition_penalty, params.presence_penalty, params.frequency_penalty)),
        ("temperature", params.temperature != 1.0, lambda x: apply_temperature(x, params.temperature)),
        ("top_k", params.top_k > 0, lambda x: top_k_filter(x, params.top_k)),
        ("top_p", params.top_p < 1.0, lambda x: top_p_filter(x, params.top_p)),
        ("min_p", params.min_p > 0.0, lambda x: min_p_filter(x, params.min_p)),
        ("typical_p", params.typical_p < 1.0, lambda x: typical_filter(x, params.typical_p)),
    )


def _trace(name: str, active: bool, before: torch.Tensor, after: torch.Tensor, ids: torch.Tensor | None):
    removed = torch.nonzero((before > NEG_INF) & (after == NEG_INF)).flatten()  # [R] positions
    removed = removed if ids is None else ids[removed].sort().values
    return StageTrace(name, active, torch.softmax(after, dim=-1), removed)


def _run(logits: torch.Tensor, params: SamplingParams, counts, ids, trace: bool, allowed=None) -> ChainResult:
    x = logits.float()  # bf16/fp16 logits would make the cumulative sums of top-p/typical-p coarse
    stages = [_trace("raw", True, x, x, ids)] if trace else []
    for name, active, step in _steps(params, counts, _on(allowed, x)):
        after = step(x) if active else x
        if trace:
            stages.append(_trace(name, active, x, after, ids))
        x = after
    return ChainResult(x, ids, tuple(stages))


def _on(allowed: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    return None if allowed is None else allowed.to(device=logits.device, dtype=torch.bool)


def run_chain(logits: torch.Tensor, params: SamplingParams, history: History = (), *,
              trace: bool = False, allowed: torch.Tensor | None = None) -> ChainResult:
    """Run the whole chain on one position's logits [V]. With trace=True also record, per stage, the
    distribution after it and the ids it removed (costs a softmax and a scan per stage, so off by default).
    Works on any stored logits vector, so a panel can re-derive everything with new params, model-free.
    `allowed` (bool [V], from a structured-output constraint) masks the rest out before any other stage."""
    counts = None
    if params.penalised and len(history) > 0:
        counts = token_counts(history, logits.shape[-1], logits.device)
    return _run(logits, params, counts, None, trace, allowed)


def run_chain_sparse(ids: torch.Tensor, logits: torch.Tensor, params: SamplingParams, history: History = (), *,
                     trace: bool = False, allowed: torch.Tensor | None = None) -> ChainResult:
    """The chain on stored top-M logits [M] of vocabulary ids [M], every other token taken as -inf.

    Exactly equal to run_chain on a full vector holding -inf outside `ids` (-inf tokens weigh nothing in
    any stage), but an approximation of the model's true distribution: the dropped tail's mass is
    renormalised onto the top M. So top-k (k <= M) and min-p are exact while their survivors lie in the top
    M; top-p keeps at most as many tokens as it would on the full vocabulary (the cut comes earlier); the
    typical-p entropy is underestimated; penalties cannot lift a seen token from outside the top M (a
    repetition penalty < 1 or a negative presence/frequency penalty); temperature > 1 makes the tail matter
    more. Returned probs and logits are aligned with `ids`; removed sets hold vocabulary ids. `allowed`
    (bool [M], aligned with `ids`) is the constraint mask the step ran under.
    """
    counts = None
    if params.penalised and len(history) > 0 and ids.numel() > 0:
        counts = token_counts(history, int(ids.max()) + 1, ids.device)[ids]
    return _run(logits, params, counts, ids, trace, allowed)


def filtered_logits(logits: torch.Tensor, params: SamplingParams, *, history: History = (),
                    allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The chain's final logits [V] (-inf = excluded); softmax of them is what sample() draws from."""
    return run_chain(logits, params, history, allowed=allowed).logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample an index from probs [..., V] by an exponential race: argmax p_i / E_i with E_i ~ Exp(1)
    picks i with probability p_i, and unlike torch.multinomial it needs no device-to-host sync."""
    race = torch.empty_like(probs).exponential_(generator=generator)
    # An E of exactly 0 would make 0/0 = NaN, which argmax ranks highest: a zero-probability token.
    race.clamp_(min=torch.finfo(race.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None, *,
               history: History = (), allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The next token id as a 0-d tensor on the logits' device, without a sync (sample() wraps it).
    The generator must live on that device too. `allowed` (bool [V]) restricts the choice to those tokens."""
    if params.greedy:
        # HF's greedy search applies the penalties but no warper, and typical-p could even drop the argmax,
        # so greedy skips the rest of the chain (but not the constraint). argmax picks the lowest id on ties.
        logits = logits.float()
        if allowed is not None:
            logits = logits.masked_fill(~_on(allowed, logits), NEG_INF)
        if params.penalised and len(history) > 0:
            counts = token_counts(history, logits.shape[-1], logits.device)
            logits = apply_penalties(logits, counts, params.repetition_penalty, params.presence_penalty,
                                     params.frequency_penalty)
        return logits.argmax(dim=-1)
    return draw(run_chain(logits, params, history, allowed=allowed).probs, generator)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None, *,
           history: History = (), allowed: torch.Tensor | None = None) -> int:
    """Choose the next token from logits [V]: argmax when greedy, else a seeded draw from the chain's output."""
    return int(next_token(logits, params, generator, history=history, allowed=allowed))
