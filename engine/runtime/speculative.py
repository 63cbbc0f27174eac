"""Speculative decoding: a drafter (engine/runtime/drafters.py) proposes k tokens, the target scores all of
them plus one in a single forward over its paged cache, and exact speculative sampling (Leviathan et
al. 2023; Chen et al. 2023) keeps a prefix of them:

- drafted token x is accepted with probability min(1, p(x) / q(x)); p is the target's sampling
  distribution and q the draft's, both after the same sampler chain (penalties, temperature, top-k,
  top-p, min-p, typical-p), so the output is distributed exactly as plain sampling from the target;
- on the first rejection the next token comes from normalize(max(0, p - q)) and the step ends;
- when all k are accepted, the target's distribution after them gives a bonus token;
- greedy: accept while the target's argmax equals the draft, then take the target's argmax.

Rejected tokens are rolled back in the target's cache and the drafter's (their blocks freed). Every
step is reported: per drafted token accepted or not with p_draft and p_target, per step the tokens
per target forward, running acceptance by position and a measured speedup: every PLAIN_EVERY-th step
of a sequence is a plain one-token step, which times plain decoding on the same machine and context.
Shape legend: B independent samples, k drafted tokens, V vocab.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from engine.runtime.block_manager import OutOfKVBlocks
from engine.text.constraints import ConstraintError, draft_masks
from engine.records import DraftToken, SpecStep
from engine.sampling import draw, next_token, run_chain

PLAIN_EVERY = 32  # a plain step this often keeps the speedup figure measured rather than assumed

AcceptRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def accept_exact(p_x: torch.Tensor, q_x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Accept with probability min(1, p/q): u ~ U[0, 1) and u * q < p (no division by a tiny q)."""
    return u * q_x < p_x


def verify(drafts: torch.Tensor, q: torch.Tensor | None, p: torch.Tensor, generator: torch.Generator | None = None,
           accept: AcceptRule = accept_exact) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact speculative sampling over a batch. drafts [B, k] (long), q [B, k, V] the distributions the
    drafts were drawn from (None: a deterministic drafter, i.e. one-hot), p [B, k+1, V] the target's.
    Returns (accepted count [B], the next token [B]: resampled from the residual, or the bonus)."""
    B, k = drafts.shape
    V = p.shape[-1]
    if q is None:
        q = torch.nn.functional.one_hot(drafts, V).to(p.dtype)
    rows = torch.arange(B)
    if k:
        p_x = p[:, :k].gather(-1, drafts.unsqueeze(-1)).squeeze(-1)  # [B, k]
        q_x = q.gather(-1, drafts.unsqueeze(-1)).squeeze(-1)
        u = torch.rand((B, k), generator=generator, dtype=p.dtype)
        kept = accept(p_x, q_x, u)
        n = kept.long().cumprod(-1).sum(-1)  # [B] length of the accepted prefix
        at = n.clamp(max=k - 1)
        residual = (p[rows, at] - q[rows, at]).clamp(min=0)  # [B, V]
        mass = residual.sum(-1, keepdim=True)
        # p == q at that position makes rejection impossible; the guard only keeps 0/0 out of rounding.
        residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(p.dtype).tiny), p[rows, at])
        dist = torch.where((n < k).unsqueeze(-1), residual, p[:, k])
    else:
        n, dist = torch.zeros(B, dtype=torch.long), p[:, 0]
    return n, draw(dist, generator)


def verify_greedy(drafts: list[int], best: list[int]) -> int:
    """Accepted count when the target's choice at position i is best[i] (len(drafts) + 1 of them)."""
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n


@dataclass
class SpecState:
    """One sequence's speculation: its draft cache, lookahead and running figures."""

    k: int
    drafter: object  # engine/runtime/drafters.py: releases this state's cache when the sequence ends
    draft_table: object = None  # the drafter's BlockTable for this sequence
    steps: int = 0
    spec_steps: int = 0
    drafted_at: list[int] = field(default_factory=list)  # per draft position: drafted, accepted
    accepted_at: list[int] = field(default_factory=list)
    spec_tokens: int = 0
    spec_s: float = 0.0
    plain_tokens: int = 0
    plain_s: float = 0.0

    def count(self, k: int, n: int) -> None:
        grow = k - len(self.drafted_at)
        if grow > 0:
            self.drafted_at += [0] * grow
            self.accepted_at += [0] * grow
        for i in range(k):
            self.drafted_at[i] += 1
            self.accepted_at[i] += i < n

    @property
    def speedup(self) -> float:
        if not (self.plain_tokens and self.spec_s):
            return 0.0
        return (self.spec_tokens / self.spec_s) / (self.plain_tokens / self.plain_s)


def speculative_request_step(runner, state, out: list) -> None:
    """One decode step of every sequence of a speculative request (one at a time), through the runner's
    public verbs (engine/runtime/runner.py); a cache that runs out of blocks fails this request only."""
    try:
        for seq in list(state.sequences):
            speculative_step(runner, state, seq, out)
    except (OutOfKVBlocks, NotImplementedError, ValueError, OSError, ConstraintError) as e:
        runner.fail(state, f"speculative decoding: {e}", out)
        return
    runner.retire(state, out)


def speculative_step(runner, request_state, seq, out: list) -> None:
    """One decode step of `seq` with speculation: draft, verify in one target forward, keep, roll back."""
    request = request_state.request
    options, params = request.speculative, request.params
    drafter = request_state.drafter
    state = seq.speculation
    if state is None:
        state = seq.speculation = SpecState(options.k, drafter)
    t0 = time.perf_counter()
    prompt = list(request.prompt_ids)
    context = prompt + seq.generated  # its last token is the pending one, not yet in the target's cache
    committed = seq.table.num_tokens
    # Never draft past the request's token budget or the context (the +1 is the resampled/bonus token).
    room = min(params.max_new_tokens - len(seq.generated), runner.config.max_seq_len - committed - 2) - 1
    plain = state.steps % PLAIN_EVERY == 0
    k = 0 if plain else max(0, min(state.k, room))
    # LongRoPE: a verify window stays on one side of the original context, and the step that crosses it first
    # recomputes the cache with the long factors, exactly as plain decoding does (runner.rotate_long_if_crossing)
    if (short_room := runner.short_rope_room(seq)) is not None:
        k = min(k, short_room)
    runner.rotate_long_if_crossing(seq)

    def history(i: int, drafted: list[int]):
        return prompt + seq.generated + drafted[:i] if params.penalised else ()

    proposal = drafter.propose(state, context, k, params, history, seq.generator) if k else None
    drafts = proposal.tokens[:k] if proposal else []
    k = len(drafts)
    t1 = time.perf_counter()
    logits = runner.run_tokens(seq.table, [seq.pending] + drafts)  # [k+1, V]
    seq.pending = None
    cpu = logits.float().cpu()
    masks = draft_masks(seq.constraint, drafts)  # structured output: the mask at each verified position
    if params.greedy:
        best = [int(next_token(cpu[i], params, history=history(i, drafts), allowed=masks[i])) for i in range(k + 1)]
        n = verify_greedy(drafts, best)
        token, p = best[n], None
    else:
        p = torch.stack([run_chain(cpu[i], params, history(i, drafts), allowed=masks[i]).probs for i in range(k + 1)])
        q = proposal.q[:k] if proposal and proposal.q is not None else None
        n_t, token_t = verify(torch.tensor([drafts], dtype=torch.long), None if q is None else q[None], p[None],
                              seq.generator)
        n, token = int(n_t[0]), int(token_t[0])
    # Roll back the rejected tokens: the target keeps pending + accepted, the drafter the same prefix.
    runner.blocks.truncate(seq.table, committed + 1 + n)
    drafter.rollback(state, committed + 1 + n)
    t2 = time.perf_counter()
    state.steps += 1
    if k:
        state.count(k, n)
        state.spec_steps += 1
        _adapt(state, options, k, n)
    spec = _spec_record(runner, drafter, state, proposal, drafts, n, cpu, p, (t1 - t0) * 1000, (t2 - t1) * 1000)
    emitted = drafts[:n] + [token]
    t3 = time.perf_counter()
    for i, tok in enumerate(emitted):
        seq.allowed = masks[i]  # the mask this token was chosen under, for its step record
        role = "accepted" if i < n else ("" if not k else "bonus" if n == k else "resampled")
        record = runner.emit(request_state, seq, tok, logits[i], out, spec_role=role)
        if i == len(emitted) - 1 or seq.finish_reason is not None:  # the step's figures ride on its last token
            out[-1] = dataclasses.replace(record, spec=spec)
        if seq.finish_reason:
            break
    elapsed = t2 - t0 + time.perf_counter() - t3
    if k:
        state.spec_tokens += len(emitted)
        state.spec_s += elapsed
    else:
        state.plain_tokens += 1
        state.plain_s += elapsed


def _adapt(state: SpecState, options, k: int, n: int) -> None:
    """Adaptive lookahead: one more after a fully accepted step, one fewer after a rejection."""
    if options.adaptive:
        state.k = min(state.k + 1, 2 * options.k) if n == k else max(1, state.k - 1)


def _spec_record(runner, drafter, state: SpecState, proposal, drafts, n, cpu, p, draft_ms, verify_ms) -> SpecStep:
    if p is None:  # greedy: report the target's raw distribution
        p = torch.softmax(cpu, dim=-1)
    q = proposal.q if proposal is not None else None
    # Tokens after the first rejection are discarded unjudged; they are reported as not accepted.
    tokens = tuple(
        DraftToken(tok, runner.tokenizer.token_text(tok), i < n, 1.0 if q is None else float(q[i, tok]),
                   float(p[i, tok]))
        for i, tok in enumerate(drafts))
    accepted, total = sum(state.accepted_at), sum(state.drafted_at)
    return SpecStep(
        drafter=drafter.name, drafted=tokens, accepted=n, tokens_per_forward=n + 1,
        acceptance_rate=accepted / total if total else 0.0,
        acceptance_by_position=tuple(a / d for a, d in zip(state.accepted_at, state.drafted_at)),
        mean_accepted=accepted / state.spec_steps if state.spec_steps else 0.0, speedup=state.speedup,
        draft_ms=draft_ms, verify_ms=verify_ms)
