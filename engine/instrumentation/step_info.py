"""Builds the plain records the panels draw: one StepRecord per generated token, and memory
snapshots. Everything leaves here as Python numbers; only what the request asked for is computed."""
from __future__ import annotations

import time

import psutil
import torch

from engine.records import MemorySnapshot, StepRecord, TokenProb
from engine.sampling import run_chain


def _top(tokenizer, probs: torch.Tensor, n: int) -> tuple[TokenProb, ...]:
    values, ids = torch.topk(probs, min(n, probs.shape[-1]))
    return tuple(TokenProb(int(i), tokenizer.token_text(int(i)), float(v)) for v, i in zip(values, ids))


def step_record(engine, request, seq, token: int, logits: torch.Tensor, probe, row: int) -> StepRecord:
    options, params = request.spec.instrument, request.spec.params
    logits = logits.float().cpu()
    now = time.perf_counter()
    step_ms = (now - getattr(seq, "t_last", now)) * 1000
    seq.t_last = now
    if not hasattr(seq, "stream"):
        seq.stream = engine.tokenizer.stream_decoder()
    is_eos = token in engine.tokenizer.eos_ids and not params.ignore_eos
    text = "" if is_eos else seq.stream.push(token)
    raw = torch.softmax(logits, dim=-1)
    fields: dict = {}
    if options.top_n or params.greedy is False:
        history = list(request.spec.prompt_ids) + seq.generated[:-1] if params.penalised else ()
        chain = run_chain(logits, params, history, trace=False, allowed=getattr(seq, "allowed", None))
        final = chain.probs
    else:
        final = raw
    prob = float((raw if params.greedy else final)[token])
    fields["entropy"] = float(torch.special.entr(final).sum())  # -sum p log p, with 0 log 0 = 0
    if options.top_n:
        fields["top_before"] = _top(engine.tokenizer, raw, options.top_n)
        fields["top_after"] = _top(engine.tokenizer, final, options.top_n)
    if options.stored_logits:
        m = logits.shape[-1] if options.stored_logits < 0 else min(options.stored_logits, logits.shape[-1])
        values, ids = torch.topk(logits, m)
        fields["logit_ids"], fields["logit_values"] = tuple(ids.tolist()), tuple(values.tolist())
        if getattr(seq, "allowed", None) is not None:  # structured output: what the constraint let through
            fields["logit_allowed"] = tuple(seq.allowed[ids].tolist())
    if probe is not None and options.routing:
        fields["routing"] = probe.routing_for(row)
    if probe is not None and options.attention_layers:
        fields["attention"] = probe.attention_for(row, seq.table.num_tokens)
    if options.memory:
        fields["memory"] = memory_snapshot(engine)
    return StepRecord(request.id, len(seq.generated) - 1, token, text, prob, seq_index=seq.index,
                      step_ms=step_ms, **fields)


def memory_snapshot(engine) -> MemorySnapshot:
    stats, blocks = engine.blocks.stats(), engine.blocks
    tables = {f"{r.id}.{s.index}": tuple(s.table.block_ids) for r in engine.running.values() for s in r.sequences}
    live = [s for r in engine.running.values() for s in r.sequences]
    filled: dict[int, int] = {}  # block -> slots holding K/V (the fullest sharer decides)
    for s in live:
        for i, block in enumerate(s.table.block_ids):
            filled[block] = max(filled.get(block, 0), min(blocks.block_size, s.table.num_tokens - i * blocks.block_size))
    per_block = engine.pool.nbytes // blocks.num_blocks
    per_token = per_block // blocks.block_size
    cuda_alloc = cuda_reserved = 0
    if engine.pool.k.is_cuda:
        cuda_alloc, cuda_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    return MemorySnapshot(
        kv_blocks_total=stats.total, kv_blocks_used=stats.used, kv_blocks_shared=stats.shared,
        kv_blocks_cached_free=stats.cached_free, kv_blocks_free=stats.free, kv_block_size=blocks.block_size,
        kv_bytes_per_block=per_block, kv_tokens=sum(s.table.num_tokens for s in live), kv_slots_filled=sum(filled.values()),
        # a contiguous cache reserves the model's whole context for every live sequence
        kv_contiguous_bytes=len(live) * engine.config.max_seq_len * per_token,
        block_tables=tables, block_refs=tuple(blocks.ref_count), cached_blocks=tuple(blocks.cached),
        weight_bytes=engine.model.weight_bytes(),
        process_rss=psutil.Process().memory_info().rss, cuda_allocated=cuda_alloc, cuda_reserved=cuda_reserved)
