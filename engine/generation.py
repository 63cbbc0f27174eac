"""The paged generation engine: requests in, step records out, many requests in flight.

`step()` admits waiting requests (prefix-cache lookup, chunked prefill), then runs one batched
decode step over every running sequence. Sequences of one request (parallel samples, best-of,
beams) share their prompt's KV blocks through forks. No threads: the caller drives `step()` and
may `cancel()` between steps. Out of KV blocks, new requests wait; a running request that cannot
get a block fails with a clear message while the others go on; nothing leaks.
Shape legend: B sequences in a decode batch, T tokens, V vocab.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from engine.block_manager import BlockManager, BlockTable, OutOfKVBlocks
from engine.constraints import ConstraintError, TokenConstraint, mask_logits
from engine.instrumentation.probe import Probe
from engine.instrumentation.step_info import memory_snapshot, step_record
from engine.kv_pool import KVPool, blocks_for_budget
from engine.records import GenerationRequest, RequestDone, SequenceResult, StepRecord
from engine.sampling import sample
from engine.speculative import speculative_request_step
from engine.static_decode import StaticDecoder, graphable


@dataclass
class Sequence:
    index: int
    table: BlockTable
    generator: torch.Generator
    pending: int | None = None  # sampled, not yet written to the KV cache
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    score: float = 0.0  # beam search: sum of log-probabilities
    finish_reason: str | None = None
    constraint: TokenConstraint | None = None  # structured output: the grammar's position after `generated`
    allowed: torch.Tensor | None = None  # bool [V]: the constraint's mask for the next token
    spec: object = None  # speculative decoding state (engine/speculative.py SpecState)


@dataclass
class Request:
    id: int
    spec: GenerationRequest
    sequences: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    cached_tokens: int = 0
    prefill_ms: float = 0.0
    t_decode: float = 0.0


class GenerationEngine:
    def __init__(self, model, tokenizer, kv_budget_bytes: int = 256 << 20, block_size: int = 16,
                 prefill_chunk: int = 512, num_blocks: int | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        dtype, device = model.embed.weight.dtype, model.embed.weight.device
        num_blocks = num_blocks or blocks_for_budget(self.config, block_size, kv_budget_bytes, dtype)
        self.pool = KVPool(self.config, num_blocks, block_size, device, dtype)
        self.blocks = BlockManager(num_blocks, block_size)
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self._ids = itertools.count()
        self._cancelled: set[int] = set()
        self.tokens_computed = 0  # prompt + decode tokens run through the model (prefix hits excluded)
        self.forward_calls = 0  # model forward passes so far
        self.drafters: dict = {}  # speculative decoding: drafter spec -> drafter (built on first use)
        # Batch-1 decode through CUDA graphs on a GPU (engine/static_decode.py); None: always the paged view.
        self.static = StaticDecoder(model, self.pool) if device.type == "cuda" else None

    # -- API ----------------------------------------------------------------------------------
    def submit(self, spec: GenerationRequest) -> int:
        request = Request(next(self._ids), spec)
        self.waiting.append(request)
        return request.id

    def cancel(self, request_id: int) -> None:
        self._cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list:
        out: list = []
        self._drop_cancelled(out)
        self._admit(out)
        self._decode(out)
        return out

    def memory(self):
        return memory_snapshot(self)

    # -- scheduling ---------------------------------------------------------------------------
    def _drop_cancelled(self, out) -> None:
        for rid in list(self._cancelled):
            request = self.running.pop(rid, None)
            if request is None:
                request = next((r for r in self.waiting if r.id == rid), None)
                if request is None:
                    continue  # unknown or already finished
                self.waiting.remove(request)
            for seq in request.sequences:
                seq.finish_reason = "cancelled"
            out.append(self._finish(request))
        self._cancelled.clear()

    def _admit(self, out) -> None:
        while self.waiting:
            request = self.waiting[0]
            prompt = list(request.spec.prompt_ids)
            if not prompt or len(prompt) >= self.config.max_seq_len:
                self.waiting.popleft()
                out.append(self._fail(request, f"the prompt has {len(prompt)} tokens; the model's context "
                                               f"holds {self.config.max_seq_len}" if prompt else "the prompt is empty"))
                continue
            table = self.blocks.match_prefix(prompt)
            need = self.blocks.blocks_needed(table, len(prompt) - table.num_tokens)
            if need > self.blocks.num_available:
                self.blocks.release(table)
                if not self.running:  # nothing will ever free enough: say so instead of waiting forever
                    self.waiting.popleft()
                    out.append(self._fail(request, f"out of KV cache blocks: the prompt needs {need} more blocks, "
                                                   f"the pool has {self.blocks.num_blocks}; raise the KV budget"))
                    continue
                return
            self.waiting.popleft()
            self._prefill(request, table, prompt, out)

    def _prefill(self, request: Request, table: BlockTable, prompt: list[int], out) -> None:
        t0 = time.perf_counter()
        try:  # a bad or unsatisfiable constraint fails the request before any compute is spent on it
            constraint = self._start_constraint(request.spec.params)
        except ConstraintError as e:
            self.blocks.release(table)
            out.append(self._fail(request, str(e)))
            return
        request.cached_tokens = table.num_tokens
        probe = self._probe(request, 1)
        logits = None
        for start in range(table.num_tokens, len(prompt), self.prefill_chunk):
            chunk = prompt[start:start + self.prefill_chunk]
            logits = self._forward([table], [chunk], probe)[0, -1]
        request.prefill_ms = (time.perf_counter() - t0) * 1000
        request.t_decode = time.perf_counter()
        self.running[request.id] = request
        spec = request.spec
        for i in range(spec.num_samples):
            gen = torch.Generator(device="cpu")
            gen.manual_seed(spec.params.seed + i) if spec.params.seed is not None else gen.seed()
            request.sequences.append(Sequence(i, table if i == 0 else self.blocks.fork(table), gen,
                                              constraint=constraint if i == 0 or not constraint else constraint.fork()))
            self._next_mask(request.sequences[-1])
        if spec.beams:
            self._beam_step(request, logits.unsqueeze(0)[:1], out)
        else:
            for seq in request.sequences:
                self._accept(request, seq, logits, probe, 0, out)
        self._retire(request, out)

    def _decode(self, out) -> None:
        batch: list[tuple[Request, Sequence]] = []
        for request in list(self.running.values()):
            if request.spec.speculative.enabled:  # draft, verify in one forward, roll back the rejected
                speculative_request_step(self, request, out)
                continue
            try:
                for seq in request.sequences:
                    self._reserve(seq)
                    self._next_mask(seq)
                batch += [(request, seq) for seq in request.sequences]
            except OutOfKVBlocks as e:
                del self.running[request.id]
                out.append(self._fail(request, f"{e}; the request was stopped, the others go on"))
            except ConstraintError as e:
                del self.running[request.id]
                out.append(self._fail(request, f"{e}; the request was stopped, the others go on"))
        if not batch:
            return
        instrumented = [r for r, _ in batch if r.spec.instrument.enabled]
        probe = self._probe(instrumented[0], len(batch)) if instrumented else None
        tables = [seq.table for _, seq in batch]
        logits = self._forward(tables, None, probe)[:, -1]  # [B, V]
        for row, (request, seq) in enumerate(batch):
            seq.pending = None
            if not request.spec.beams:
                self._accept(request, seq, logits[row], probe, row, out)
        for request in {id(r): r for r, _ in batch}.values():
            if request.spec.beams:
                rows = [row for row, (r, _) in enumerate(batch) if r is request]
                self._beam_step(request, logits[rows], out)
            self._retire(request, out)

    def _release(self, seq: Sequence) -> None:
        self.blocks.release(seq.table)
        if seq.spec is not None:  # the drafter's cache for this sequence too
            seq.spec.drafter.release(seq.spec)

    def _reserve(self, seq: Sequence) -> None:
        """Give the sequence's pending token a KV slot (done before the batched forward)."""
        _, copies = self.blocks.append(seq.table, [seq.pending])
        self.pool.copy_blocks(copies)

    # -- model --------------------------------------------------------------------------------
    def _forward(self, tables: list[BlockTable], chunks: list[list[int]] | None, probe) -> torch.Tensor:
        """One forward over B sequences. With chunks: append those tokens first (prefill);
        without: each table's last token is the new one (decode, slots already reserved)."""
        device = self.pool.k.device
        if chunks is not None:
            (table,), (chunk,) = tables, chunks
            start = table.num_tokens
            slots, copies = self.blocks.append(table, chunk)
            self.pool.copy_blocks(copies)
            tokens, positions = [chunk], [list(range(start, start + len(chunk)))]
        else:
            size = self.blocks.block_size
            slots = [t.block_ids[(t.num_tokens - 1) // size] * size + (t.num_tokens - 1) % size for t in tables]
            tokens, positions = [[t.tokens[-1]] for t in tables], [[t.num_tokens - 1] for t in tables]
        if chunks is None and len(tables) == 1 and self.static is not None and graphable(self.model, probe):
            self.tokens_computed += 1
            self.forward_calls += 1
            (table,) = tables
            return self.static.decode(table.tokens[-1], table.num_tokens - 1, slots[0], table.block_ids)
        width = max(len(t.block_ids) for t in tables)
        block_tables = [t.block_ids + [0] * (width - len(t.block_ids)) for t in tables]
        view = self.pool.view(positions, slots, block_tables, [t.num_tokens for t in tables])
        self.tokens_computed += sum(len(x) for x in tokens)
        self.forward_calls += 1
        return self.model(torch.tensor(tokens, device=device), view, probe=probe,
                          last_only=chunks is not None)

    def _probe(self, request: Request, batch: int) -> Probe | None:
        options = request.spec.instrument
        if not options.enabled:
            return None
        return Probe(options, self.config.n_heads, self.config.n_kv_heads, batch)

    # -- tokens -------------------------------------------------------------------------------
    def _accept(self, request: Request, seq: Sequence, logits: torch.Tensor, probe, row: int, out) -> None:
        params = request.spec.params
        history = list(request.spec.prompt_ids) + seq.generated if params.penalised else ()
        token = sample(logits.float().cpu(), params, seq.generator, history=history, allowed=seq.allowed)
        self._push(request, seq, token, logits, probe, row, out)

    def _push(self, request: Request, seq: Sequence, token: int, logits, probe, row: int, out) -> None:
        # One fused log-softmax kernel: cheaper on the CPU than logsumexp's five ops (measured).
        logprob = float(torch.log_softmax(logits.float(), dim=-1)[token])
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        seq.pending = token
        if seq.constraint is not None and not seq.constraint.finished:  # finished: only EOS, even if ignored
            seq.constraint.advance(token)
        out.append(step_record(self, request, seq, token, logits, probe, row))
        params = request.spec.params
        if token in self.tokenizer.eos_ids and not params.ignore_eos:
            seq.finish_reason = "eos"
        elif len(seq.generated) >= params.max_new_tokens:
            seq.finish_reason = "length"
        elif params.stop and any(s in self.tokenizer.decode(seq.generated) for s in params.stop):
            seq.finish_reason = "stop"
        elif seq.table.num_tokens + 1 >= self.config.max_seq_len:
            seq.finish_reason = "context_full"

    def _beam_step(self, request: Request, logits: torch.Tensor, out) -> None:
        from engine.beam import select_beams

        logits = torch.stack([mask_logits(row, seq.allowed) for row, seq in zip(logits, request.sequences)])
        select_beams(self, request, logits, out)

    # -- structured output --------------------------------------------------------------------
    def _start_constraint(self, params) -> TokenConstraint | None:
        if not params.constraint_kind:
            return None
        return TokenConstraint.start(params.constraint_kind, params.constraint, self.tokenizer, self.config.vocab_size)

    @staticmethod
    def _next_mask(seq: Sequence) -> None:
        """The constraint's mask for the sequence's next token (computed before the forward that needs it)."""
        seq.allowed = seq.constraint.allowed() if seq.constraint is not None else None

    def _retire(self, request: Request, out) -> None:
        done = [s for s in request.sequences if s.finish_reason]
        for seq in done:
            request.sequences.remove(seq)
            request.finished.append(seq)
            self._release(seq)
        if not request.sequences:
            self.running.pop(request.id, None)
            out.append(self._finish(request))

    def _finish(self, request: Request) -> RequestDone:
        for seq in request.sequences:  # cancelled mid-flight
            self._release(seq)
            request.finished.append(seq)
        request.sequences = []
        seqs = request.finished
        spec = request.spec
        if spec.beams:
            seqs = sorted(seqs, key=lambda s: s.score / max(len(s.generated), 1), reverse=True)
        elif spec.best_of:
            seqs = sorted(seqs, key=lambda s: sum(s.logprobs) / max(len(s.logprobs), 1), reverse=True)[:spec.n]
        results = tuple(self._result(s) for s in seqs)
        decode_ms = (time.perf_counter() - request.t_decode) * 1000 if request.t_decode else 0.0
        return RequestDone(request.id, results, len(spec.prompt_ids), request.cached_tokens,
                           request.prefill_ms, decode_ms)

    def _result(self, seq: Sequence) -> SequenceResult:
        ids = seq.generated
        if seq.finish_reason == "eos":
            ids = ids[:-1]
        text = self.tokenizer.decode(ids)
        return SequenceResult(seq.index, text, tuple(ids), seq.finish_reason or "cancelled",
                              sum(seq.logprobs) / max(len(seq.logprobs), 1))

    def _fail(self, request: Request, message: str) -> RequestDone:
        for seq in request.sequences:
            self._release(seq)
        request.sequences = []
        return RequestDone(request.id, (), len(request.spec.prompt_ids), request.cached_tokens,
                           request.prefill_ms, 0.0, error=message)
