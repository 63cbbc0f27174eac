"""The paged runner: requests in, step records out, many requests in flight.

`step()` admits waiting requests (prefix-cache lookup, chunked prefill), then runs one batched
decode step over every running sequence. Sequences of one request (parallel samples, best-of,
beams) share their prompt's KV blocks through forks. No threads: the caller (engine/engine.py, the
facade) drives `step()` and may `cancel()` between steps. Out of KV blocks, new requests wait; a
running request that cannot get a block fails with a clear message while the others go on; nothing
leaks.

Strategies (engine/runtime/speculative.py, beam.py) use only the public verbs: run_tokens, emit,
retire, fail, release, new_sequence. The runner neither loads nor builds models: a drafter arrives
with its request.
Shape legend: B sequences in a decode batch, T tokens, V vocab.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import deque

import torch

from engine.instrumentation.interventions import installed as installed_interventions
from engine.instrumentation.probe import Probe
from engine.instrumentation.step_info import memory_snapshot, step_record
from engine.layers.lora import adapters_active
from engine.records import GenerationRequest, RequestDone, StepRecord
from engine.runtime.block_manager import BlockManager, BlockTable, OutOfKVBlocks
from engine.runtime.kv_pool import KVPool, blocks_for_budget
from engine.runtime.sequence import (RequestState, Sequence, next_mask, request_done, start_constraint,
                                     stop_reason)
from engine.runtime.fused_decode import FusedDecoder, why_not
from engine.runtime.static_decode import StaticDecoder, graphable
from engine.sampling import sample
from engine.text.constraints import ConstraintError, mask_logits


class Runner:
    def __init__(self, model, tokenizer, kv_budget_bytes: int = 256 << 20, block_size: int = 16,
                 prefill_chunk: int = 512, num_blocks: int | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        dtype, device = model.embed.weight.dtype, model.embed.weight.device
        num_blocks = num_blocks or blocks_for_budget(self.config, block_size, kv_budget_bytes, dtype)
        self.pool = KVPool(self.config, num_blocks, block_size, device, dtype)
        self.blocks = BlockManager(num_blocks, block_size)
        self.prefill_chunk = prefill_chunk
        self._waiting: deque[RequestState] = deque()
        self._running: dict[int, RequestState] = {}
        self._ids = itertools.count()
        self._cancelled: set[int] = set()
        self.tokens_computed = 0  # prompt + decode tokens run through the model (prefix hits excluded)
        self.forward_calls = 0  # model forward passes so far
        # Batch-1 decode through CUDA graphs on a GPU (engine/runtime/static_decode.py); None: always the paged view.
        self.static = StaticDecoder(model, self.pool) if device.type == "cuda" else None
        # Decode steps on the CPU in one C++ call where the model allows it (engine/runtime/fused_decode.py);
        # GLASSBOX_FUSED_DECODE=0 keeps the Python path (the same logits, slower: for measuring the difference).
        self.fused = (FusedDecoder(model, self.pool) if os.environ.get("GLASSBOX_FUSED_DECODE", "1") != "0"
                      and why_not(model, self.pool) is None else None)
        self._weight_bytes: dict[str, int] | None = None  # the model's, for memory snapshots (walked once)
        self._last_memory = None  # the last MemorySnapshot: the next shares its unchanged parts

    # -- the caller's API -----------------------------------------------------------------------
    def submit(self, request: GenerationRequest, drafter=None, rejection: str | None = None) -> int:
        if request.speculative.enabled and drafter is None and rejection is None:
            rejection = "speculative decoding: no drafter was built for this request"
        state = RequestState(next(self._ids), request, drafter, rejection)
        self._waiting.append(state)
        return state.id

    def cancel(self, request_id: int) -> None:
        self._cancelled.add(request_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list:
        out: list = []
        self._drop_cancelled(out)
        self._admit(out)
        self._decode(out)
        return out

    def in_flight(self) -> list[RequestState]:
        """Requests admitted and not yet finished (the soak tests check their tables against the blocks)."""
        return list(self._running.values())

    def drop_prefix_cache(self) -> int:
        """Forget every cached prompt prefix (Engine.set_interventions: K/V computed by the model before the
        change must not be reused after it). Returns the blocks freed."""
        return self.blocks.forget_prefixes()

    def _draft_pools(self) -> tuple[int, int, int]:
        """The running requests' draft models' own KV pools: (blocks used, blocks, bytes per block). A
        drafter without a cache (prompt lookup) has none."""
        used = total = per_block = 0
        seen = set()
        for state in self._running.values():
            blocks = getattr(state.drafter, "blocks", None)
            if blocks is not None and id(blocks) not in seen:
                seen.add(id(blocks))
                used, total = used + blocks.stats().used, total + blocks.num_blocks
                pool = getattr(state.drafter, "pool", None)
                per_block = pool.nbytes // blocks.num_blocks if pool is not None else per_block
        return used, total, per_block

    def memory(self):
        live = [s for r in self._running.values() for s in r.sequences]
        names = {id(s): f"{r.id}.{s.index}" for r in self._running.values() for s in r.sequences}
        if self._weight_bytes is None:  # a walk of every module: ~1 ms, too much for every step
            self._weight_bytes = self.model.weight_bytes()
        self._last_memory = memory_snapshot(self.blocks, self.pool, self.config.max_seq_len, self._weight_bytes,
                                            {names[id(s)]: s.table for s in live}, self._last_memory,
                                            {names[id(s)]: r.cached_tokens for r in self._running.values()
                                             for s in r.sequences}, self._draft_pools())
        return self._last_memory

    # -- the strategies' verbs --------------------------------------------------------------------
    def run_tokens(self, table: BlockTable, tokens: list[int]) -> torch.Tensor:
        """Append `tokens` to one sequence's cache and run them through the model: logits [T, V]."""
        start = table.num_tokens
        slots, copies = self.blocks.append(table, tokens)
        self.pool.copy_blocks(copies)
        view = self.pool.view([list(range(start, start + len(tokens)))], slots, [table.block_ids], [table.num_tokens],
                              [table.rope_long])
        self.tokens_computed += len(tokens)
        self.forward_calls += 1
        return self.model(torch.tensor([tokens], device=self.pool.k.device), view)[0]

    def emit(self, state: RequestState, seq: Sequence, token: int, logits: torch.Tensor, out: list,
             probe: Probe | None = None, row: int = 0, **marks) -> StepRecord:
        """`token` joins `seq`: its log-probability, the constraint's advance, a StepRecord (with `marks`,
        e.g. spec_role) appended to `out`, and the stop checks that may finish the sequence."""
        # One fused log-softmax kernel: cheaper on the CPU than logsumexp's five ops (measured).
        logprob = float(torch.log_softmax(logits.float(), dim=-1)[token])
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        seq.pending = token
        if seq.constraint is not None and not seq.constraint.finished:  # finished: only EOS, even if ignored
            seq.constraint.advance(token)
        memory = self.memory if state.request.instrument.memory else None
        record = step_record(self.tokenizer, state.id, state.request, seq, token, logits, probe, row, memory, **marks)
        out.append(record)
        seq.finish_reason = stop_reason(seq, state.request.params, self.tokenizer, self.config.max_seq_len)
        return record

    def retire(self, state: RequestState, out: list) -> None:
        """Sequences that finished give back their blocks; the last one ends the request (RequestDone)."""
        done = [s for s in state.sequences if s.finish_reason]
        for seq in done:
            state.sequences.remove(seq)
            state.finished.append(seq)
            self.release(seq)
        if not state.sequences:
            self._running.pop(state.id, None)
            out.append(self._finish(state))

    def fail(self, state: RequestState, message: str, out: list) -> None:
        """End the request with `message` (a RequestDone with error); its blocks are freed, others go on."""
        self._running.pop(state.id, None)
        for seq in state.sequences:
            self.release(seq)
        state.sequences = []
        out.append(RequestDone(state.id, (), len(state.request.prompt_ids), state.cached_tokens,
                               state.prefill_ms, 0.0, error=message))

    def release(self, seq: Sequence) -> None:
        self.blocks.release(seq.table)
        if seq.speculation is not None:  # the drafter's cache for this sequence too
            seq.speculation.drafter.release(seq.speculation)

    def new_sequence(self, index: int, table: BlockTable, parent: Sequence | None = None, **fields) -> Sequence:
        """A sequence over `table`; a child of `parent` (beam search) carries on its tokens and grammar."""
        if parent is None:
            return Sequence(index, table, torch.Generator(device="cpu"), self.tokenizer.stream_decoder(), **fields)
        return Sequence(index, table, parent.generator, self.tokenizer.stream_decoder(),
                        generated=list(parent.generated), logprobs=list(parent.logprobs),
                        constraint=parent.constraint and parent.constraint.fork(), allowed=parent.allowed,
                        t_last=parent.t_last, **fields)

    # -- scheduling ---------------------------------------------------------------------------
    def _drop_cancelled(self, out) -> None:
        for rid in list(self._cancelled):
            state = self._running.pop(rid, None)
            if state is None:
                state = next((r for r in self._waiting if r.id == rid), None)
                if state is None:
                    continue  # unknown or already finished
                self._waiting.remove(state)
            for seq in state.sequences:
                seq.finish_reason = "cancelled"
            out.append(self._finish(state))
        self._cancelled.clear()

    def _admit(self, out) -> None:
        while self._waiting:
            state = self._waiting[0]
            prompt = list(state.request.prompt_ids)
            if state.rejection or not prompt or len(prompt) >= self.config.max_seq_len:
                self._waiting.popleft()
                self.fail(state, state.rejection or (f"the prompt has {len(prompt)} tokens; the model's context "
                                                     f"holds {self.config.max_seq_len}" if prompt
                                                     else "the prompt is empty"), out)
                continue
            table = self.blocks.match_prefix(prompt, self.model.rope.long_from_start(len(prompt)))
            need = self.blocks.blocks_needed(table, len(prompt) - table.num_tokens)
            if need > self.blocks.num_available:
                self.blocks.release(table)
                if not self._running:  # nothing will ever free enough: say so instead of waiting forever
                    self._waiting.popleft()
                    self.fail(state, f"out of KV cache blocks: the prompt needs {need} more blocks, "
                                     f"the pool has {self.blocks.num_blocks}; raise the KV budget", out)
                    continue
                return
            self._waiting.popleft()
            self._prefill(state, table, prompt, out)

    def _prefill(self, state: RequestState, table: BlockTable, prompt: list[int], out) -> None:
        t0 = time.perf_counter()
        request = state.request
        try:  # a bad or unsatisfiable constraint fails the request before any compute is spent on it
            constraint = start_constraint(request.params, self.tokenizer, self.config.vocab_size)
        except ConstraintError as e:
            self.blocks.release(table)
            self.fail(state, str(e), out)
            return
        state.cached_tokens = table.num_tokens
        probe = self._probe(state, 1)
        logits = None
        for start in range(table.num_tokens, len(prompt), self.prefill_chunk):
            chunk = prompt[start:start + self.prefill_chunk]
            logits = self._forward([table], [chunk], probe)[0, -1]
        state.prefill_ms = (time.perf_counter() - t0) * 1000
        state.t_decode = time.perf_counter()
        self._running[state.id] = state
        for i in range(request.num_samples):
            seq = self.new_sequence(i, table if i == 0 else self.blocks.fork(table),
                                    constraint=constraint if i == 0 or not constraint else constraint.fork())
            seq.generator.manual_seed(request.params.seed + i) if request.params.seed is not None else seq.generator.seed()
            next_mask(seq)
            state.sequences.append(seq)
        if request.beams:
            self._beam_step(state, logits.unsqueeze(0)[:1], out)
        else:
            for seq in state.sequences:
                self._sample(state, seq, logits, probe, 0, out)
        self.retire(state, out)

    def _decode(self, out) -> None:
        from engine.runtime.speculative import speculative_request_step

        batch: list[tuple[RequestState, Sequence]] = []
        for state in list(self._running.values()):
            if state.drafter is not None:  # draft, verify in one forward, roll back the rejected
                speculative_request_step(self, state, out)
                continue
            try:
                for seq in state.sequences:
                    self.rotate_long_if_crossing(seq)
                    self._reserve(seq)
                    next_mask(seq)
                batch += [(state, seq) for seq in state.sequences]
            except (OutOfKVBlocks, ConstraintError) as e:
                self.fail(state, f"{e}; the request was stopped, the others go on", out)
        if not batch:
            return
        instrumented = [r for r, _ in batch if r.request.instrument.enabled]
        probe = self._probe(instrumented[0], len(batch)) if instrumented else None
        tables = [seq.table for _, seq in batch]
        logits = self._forward(tables, None, probe)[:, -1]  # [B, V]
        for row, (state, seq) in enumerate(batch):
            seq.pending = None
            if not state.request.beams:
                self._sample(state, seq, logits[row], probe, row, out)
        for state in {id(r): r for r, _ in batch}.values():
            if state.request.beams:
                rows = [row for row, (r, _) in enumerate(batch) if r is state]
                self._beam_step(state, logits[rows], out)
            self.retire(state, out)

    def rotate_long_if_crossing(self, seq: Sequence) -> None:
        """LongRoPE: when a sequence's pending token takes it past the original context, its cached keys
        (rotated with the short factors) are recomputed with the long ones, as transformers' generate() does at
        that step, so the sequence then equals one forward over all its tokens. Once per sequence; blocks of
        the same tokens already computed long (a sibling sample that crossed first) are reused."""
        table = seq.table
        if table.rope_long or not self.model.rope.long_from_start(table.num_tokens + 1):
            return
        tokens = list(table.tokens)
        self.blocks.release(table)
        seq.table = self.blocks.match_prefix(tokens + [seq.pending], rope_long=True)
        if seq.table.num_tokens < len(tokens):
            self.run_tokens(seq.table, tokens[seq.table.num_tokens:])

    def short_rope_room(self, seq: Sequence) -> int | None:
        """LongRoPE: how many tokens may follow the pending one in one forward before it would straddle the
        original context (whose positions a plain decode rotates short, one forward past it long); None: any."""
        rope = self.model.rope
        if seq.table.rope_long or rope.long_inv_freq is None or rope.long_from_start(seq.table.num_tokens + 1):
            return None
        return rope.original - seq.table.num_tokens - 1

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
        # A captured graph replays kernels, not Python: hooks installed by interventions or LoRA adapters
        # would be skipped.
        if (chunks is None and len(tables) == 1 and self.static is not None and graphable(self.model, probe)
                and not installed_interventions(self.model) and not adapters_active(self.model)):
            self.tokens_computed += 1
            self.forward_calls += 1
            (table,) = tables
            return self.static.decode(table.tokens[-1], table.num_tokens - 1, slots[0], table.block_ids,
                                      table.rope_long)
        width = max(len(t.block_ids) for t in tables)
        block_tables = [t.block_ids + [0] * (width - len(t.block_ids)) for t in tables]
        view = self.pool.view(positions, slots, block_tables, [t.num_tokens for t in tables],
                              [t.rope_long for t in tables])
        self.tokens_computed += sum(len(x) for x in tokens)
        self.forward_calls += 1
        if (chunks is None and self.fused is not None and (probe is None or not probe.options.attention_layers)
                and not installed_interventions(self.model) and not adapters_active(self.model)):
            return self.fused.decode(torch.tensor(tokens, device=device), view)
        return self.model(torch.tensor(tokens, device=device), view, probe=probe,
                          last_only=chunks is not None)

    def _probe(self, state: RequestState, batch: int) -> Probe | None:
        options = state.request.instrument
        if not options.enabled:
            return None
        return Probe(options, self.config.n_heads, self.config.n_kv_heads, batch)

    # -- tokens -------------------------------------------------------------------------------
    def _sample(self, state: RequestState, seq: Sequence, logits: torch.Tensor, probe, row: int, out) -> None:
        params = state.request.params
        history = list(state.request.prompt_ids) + seq.generated if params.penalised else ()
        token = sample(logits.float().cpu(), params, seq.generator, history=history, allowed=seq.allowed)
        self.emit(state, seq, token, logits, out, probe, row)

    def _beam_step(self, state: RequestState, logits: torch.Tensor, out) -> None:
        from engine.runtime.beam import select_beams

        logits = torch.stack([mask_logits(row, seq.allowed) for row, seq in zip(logits, state.sequences)])
        select_beams(self, state, logits, out)

    def _finish(self, state: RequestState) -> RequestDone:
        for seq in state.sequences:  # cancelled mid-flight
            self.release(seq)
            state.finished.append(seq)
        state.sequences = []
        return request_done(state, self.tokenizer)
