"""Builds the plain records the panels draw: one StepRecord per generated token, and memory
snapshots. Everything leaves here as Python numbers; only what the request asked for is computed."""
from __future__ import annotations

import os
import time
from array import array
from typing import Callable

import psutil
import torch

from engine.records import MemorySnapshot, StepRecord, TokenProb
from engine.sampling import run_chain


def _top(tokenizer, probs: torch.Tensor, n: int, positive: bool = False) -> tuple[TokenProb, ...]:
    """The n most likely tokens; with `positive`, only those the sampler left any probability (after a
    greedy or top-k chain the rest are zeros in arbitrary order, and every step's record keeps them)."""
    values, ids = torch.topk(probs, min(n, probs.shape[-1]))
    return _tokens(tokenizer, ids, values, positive)


def _tokens(tokenizer, ids: torch.Tensor, probs: torch.Tensor, positive: bool = False) -> tuple[TokenProb, ...]:
    return tuple(TokenProb(i, tokenizer.token_text(i), v) for i, v in zip(ids.tolist(), probs.tolist())
                 if not positive or v > 0)


def step_record(tokenizer, request_id: int, request, seq, token: int, logits: torch.Tensor, probe, row: int,
                memory: Callable[[], MemorySnapshot] | None = None, **marks) -> StepRecord:
    """The record of `token`, just appended to `seq` (engine/runtime/runner.py Sequence) of `request`
    (a GenerationRequest); `marks` are extra StepRecord fields (speculative decoding's spec_role, spec)."""
    options, params = request.instrument, request.params
    logits = logits.float().cpu()
    now = time.perf_counter()
    step_ms = (now - (seq.t_last if seq.t_last is not None else now)) * 1000
    seq.t_last = now
    is_eos = token in tokenizer.eos_ids and not params.ignore_eos
    text = "" if is_eos else seq.detokenizer.push(token)
    raw = torch.softmax(logits, dim=-1)
    fields: dict = {}
    # The stored logits' top-M (sorted) also gives the top-N before the sampler: softmax keeps the order.
    m = 0
    if options.stored_logits:
        m = logits.shape[-1] if options.stored_logits < 0 else min(options.stored_logits, logits.shape[-1])
    top_values, top_ids = torch.topk(logits, min(max(m, options.top_n), logits.shape[-1])) \
        if m or options.top_n else (None, None)
    if params.temperature == 0.0:
        # Greedy: the chain ends on the argmax alone (apply_temperature), which is the token just sampled,
        # so its distribution is one-hot there; running the chain again would only confirm it.
        final = None
        prob, fields["entropy"] = float(raw[token]), 0.0
    elif options.top_n or params.greedy is False:
        history = list(request.prompt_ids) + seq.generated[:-1] if params.penalised else ()
        final = run_chain(logits, params, history, trace=False, allowed=seq.allowed).probs
        prob = float((raw if params.greedy else final)[token])
        fields["entropy"] = float(torch.special.entr(final).sum())  # -sum p log p, with 0 log 0 = 0
    else:
        final = raw
        prob, fields["entropy"] = float(raw[token]), float(torch.special.entr(raw).sum())
    if options.top_n:
        ids = top_ids[:options.top_n]
        fields["top_before"] = _tokens(tokenizer, ids, raw[ids])
        fields["top_after"] = (TokenProb(token, tokenizer.token_text(token), 1.0),) if final is None \
            else _top(tokenizer, final, options.top_n, positive=True)
    if m:
        # Compact arrays, not tuples of Python floats: 4 bytes a number instead of ~32 (a long chat keeps
        # every step's record).
        # Ids in 2 bytes where the vocabulary allows (SmolLM's 49,152, Llama 2's 32,000): 1 KB a token saved.
        ids = top_ids[:m].to(torch.int32).numpy()
        fields["logit_ids"] = array("H", ids.astype("uint16").tobytes()) if logits.shape[-1] <= 1 << 16 \
            else array("i", ids.tobytes())
        fields["logit_values"] = array("f", top_values[:m].numpy().tobytes())
        if seq.allowed is not None:  # structured output: what the constraint let through
            fields["logit_allowed"] = tuple(seq.allowed[top_ids[:m]].tolist())
    if probe is not None and options.routing:
        fields["routing"] = probe.routing_for(row)
    if probe is not None and options.attention_layers:
        fields["attention"] = probe.attention_for(row, seq.table.num_tokens)
    if memory is not None:
        fields["memory"] = memory()
    return StepRecord(request_id, len(seq.generated) - 1, token, text, prob, seq_index=seq.index,
                      step_ms=step_ms, **fields, **marks)


_process: psutil.Process | None = None  # this process, kept: making one reads /proc each time
_rss_read: tuple[float, int] = (-1.0, 0)  # (when, bytes) of the last read
RSS_MAX_AGE_S = 0.05


def _rss() -> int:
    """This process's resident set, read at most every RSS_MAX_AGE_S: a snapshot is taken on every step of
    an instrumented request, and reading /proc each time cost ~0.1 ms a token for a figure the window draws
    a few times a second."""
    global _process, _rss_read
    now = time.monotonic()
    if now - _rss_read[0] < RSS_MAX_AGE_S and _process is not None and _process.pid == os.getpid():
        return _rss_read[1]
    if _process is None or _process.pid != os.getpid():  # a forked child measures itself
        _process = psutil.Process()
    _rss_read = (now, _process.memory_info().rss)
    return _rss_read[1]


def memory_snapshot(blocks, pool, max_seq_len: int, weight_bytes: dict[str, int], tables: dict,
                    previous: MemorySnapshot | None = None, cached_tokens: dict[str, int] | None = None,
                    draft: tuple[int, int, int] = (0, 0, 0)) -> MemorySnapshot:
    """The KV pool and weights now. `weight_bytes`: the model's (Decoder.weight_bytes); `tables`: each live
    sequence's name ("request.sample") -> BlockTable; `cached_tokens`: name -> prompt tokens the prefix
    cache served it (RequestState.cached_tokens), where known; `draft`: a draft model's own KV pool (blocks
    used, blocks, bytes per block). Parts equal to `previous`'s (the last
    snapshot) are `previous`'s own objects: the block map changes once a block of tokens, and a long reply
    keeps a snapshot per step (728 reference counts are ~6 KB)."""
    refs = tuple(blocks.ref_count)
    unchanged = previous is not None and refs == previous.block_refs
    if unchanged:
        refs = previous.block_refs
        used, shared = previous.kv_blocks_used, previous.kv_blocks_shared
    else:  # a block was taken or given back since: count again
        stats = blocks.stats()
        used, shared = stats.used, stats.shared
    cached = tuple(blocks.cached)
    if previous is not None and cached == previous.cached_blocks:
        cached = previous.cached_blocks
    # Every indexed block is either held or cached, so with the same holders and as many indexed blocks
    # the held ones are the same: the walk over the index runs only when a block fills or changes hands.
    if unchanged and len(blocks.hash_of) == len(previous.prefix_blocks) + len(cached):
        prefix_blocks = previous.prefix_blocks
    else:
        prefix_blocks = tuple(sorted(b for b in blocks.hash_of if blocks.ref_count[b] > 0))
    hits = {name: n // blocks.block_size for name, n in (cached_tokens or {}).items()
            if name in tables and n >= blocks.block_size}
    if previous is not None and hits == previous.prefix_hits:
        hits = previous.prefix_hits
    old_tables = previous.block_tables if previous is not None else {}
    block_tables = {}
    for name, table in tables.items():
        ids = tuple(table.block_ids)
        block_tables[name] = old_tables[name] if old_tables.get(name) == ids else ids
    if block_tables == old_tables:
        block_tables = old_tables
    filled: dict[int, int] = {}  # block -> slots holding K/V (the fullest sharer decides)
    for table in tables.values():
        for i, block in enumerate(table.block_ids):
            filled[block] = max(filled.get(block, 0), min(blocks.block_size, table.num_tokens - i * blocks.block_size))
    sequence_tokens = {name: table.num_tokens for name, table in tables.items()}
    per_block = pool.nbytes // blocks.num_blocks
    per_token = per_block // blocks.block_size
    cuda_alloc = cuda_reserved = 0
    if pool.k.is_cuda:
        cuda_alloc, cuda_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    return MemorySnapshot(
        kv_blocks_total=blocks.num_blocks, kv_blocks_used=used, kv_blocks_shared=shared,
        kv_blocks_cached_free=len(blocks.cached), kv_blocks_free=len(blocks.free), kv_block_size=blocks.block_size,
        kv_bytes_per_block=per_block, kv_tokens=sum(sequence_tokens.values()),
        kv_slots_filled=sum(filled.values()),
        # a contiguous cache reserves the model's whole context for every live sequence
        kv_contiguous_bytes=len(tables) * max_seq_len * per_token,
        block_tables=block_tables, block_refs=refs, cached_blocks=cached, sequence_tokens=sequence_tokens,
        prefix_hits=hits, prefix_blocks=prefix_blocks,
        draft_blocks_used=draft[0], draft_blocks_total=draft[1], draft_bytes_per_block=draft[2],
        kv_latent_values=getattr(pool, "latent_values", 0), kv_per_head_values=getattr(pool, "per_head_values", 0),
        weight_bytes=previous.weight_bytes if previous is not None and previous.weight_bytes == weight_bytes
        else dict(weight_bytes),
        process_rss=_rss(), cuda_allocated=cuda_alloc, cuda_reserved=cuda_reserved)
