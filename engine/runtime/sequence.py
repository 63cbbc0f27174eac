"""What the runner (engine/runtime/runner.py) keeps per request and per sequence, when a sequence
stops, and how a finished request is reported. No model, no KV pool here."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from engine.records import GenerationRequest, RequestDone, SamplingParams, SequenceResult
from engine.runtime.block_manager import BlockTable
from engine.text.constraints import TokenConstraint


@dataclass
class Sequence:
    """One continuation of a request's prompt: its KV blocks, tokens so far and per-sequence state."""

    index: int  # which of the request's samples / beams
    table: BlockTable
    generator: torch.Generator
    detokenizer: object  # the tokenizer's streaming decoder: each token's newly completed text
    pending: int | None = None  # sampled, not yet written to the KV cache
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    score: float = 0.0  # beam search: sum of log-probabilities
    finish_reason: str | None = None
    constraint: TokenConstraint | None = None  # structured output: the grammar's position after `generated`
    allowed: torch.Tensor | None = None  # bool [V]: the constraint's mask for the next token
    speculation: object = None  # speculative decoding's per-sequence state (engine/runtime/speculative.py)
    t_last: float | None = None  # when the previous token was emitted (a StepRecord's step_ms)


@dataclass
class RequestState:
    """A request while the runner holds it."""

    id: int
    request: GenerationRequest
    drafter: object = None  # speculative decoding: built by the facade before submission
    rejection: str | None = None  # why the request fails at its first step (e.g. its drafter could not be built)
    sequences: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    cached_tokens: int = 0
    prefill_ms: float = 0.0
    t_decode: float = 0.0


def start_constraint(params: SamplingParams, tokenizer, vocab_size: int) -> TokenConstraint | None:
    """Structured output: the compiled constraint a request's sequences start from (None: no constraint)."""
    if not params.constraint_kind:
        return None
    return TokenConstraint.start(params.constraint_kind, params.constraint, tokenizer, vocab_size)


def next_mask(seq: Sequence) -> None:
    """The constraint's mask for the sequence's next token (computed before the forward that needs it)."""
    seq.allowed = seq.constraint.allowed() if seq.constraint is not None else None


def stop_reason(seq: Sequence, params: SamplingParams, tokenizer, max_seq_len: int) -> str | None:
    """Why `seq` ends after its newest token, or None while it goes on."""
    token = seq.generated[-1]
    if token in tokenizer.eos_ids and not params.ignore_eos:
        return "eos"
    if len(seq.generated) >= params.max_new_tokens:
        return "length"
    if params.stop and any(s in tokenizer.decode(seq.generated) for s in params.stop):
        return "stop"
    if seq.table.num_tokens + 1 >= max_seq_len:
        return "context_full"
    return None


def request_done(state: RequestState, tokenizer) -> RequestDone:
    """The end of a request whose sequences have all finished (best first for best-of and beams)."""
    seqs = state.finished
    request = state.request
    if request.beams:
        seqs = sorted(seqs, key=lambda s: s.score / max(len(s.generated), 1), reverse=True)
    elif request.best_of:
        seqs = sorted(seqs, key=lambda s: sum(s.logprobs) / max(len(s.logprobs), 1), reverse=True)[:request.n]
    results = tuple(_result(s, tokenizer) for s in seqs)
    decode_ms = (time.perf_counter() - state.t_decode) * 1000 if state.t_decode else 0.0
    return RequestDone(state.id, results, len(request.prompt_ids), state.cached_tokens, state.prefill_ms, decode_ms)


def _result(seq: Sequence, tokenizer) -> SequenceResult:
    ids = seq.generated
    if seq.finish_reason == "eos":
        ids = ids[:-1]
    return SequenceResult(seq.index, tokenizer.decode(ids), tuple(ids), seq.finish_reason or "cancelled",
                          sum(seq.logprobs) / max(len(seq.logprobs), 1))
