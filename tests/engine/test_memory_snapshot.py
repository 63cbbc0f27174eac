"""memory_snapshot's per-sequence fields against the block manager's own state: tokens per sequence, the
blocks the prefix cache served (hits) and the held blocks it indexes; unchanged parts are shared."""
from types import SimpleNamespace

import torch

from engine.instrumentation.step_info import memory_snapshot
from engine.runtime.block_manager import BlockManager

POOL = SimpleNamespace(nbytes=16 * 1024, k=torch.empty(0))  # 16 blocks of 1 KB on the CPU


def snapshot(blocks, tables, previous=None, cached_tokens=None):
    return memory_snapshot(blocks, POOL, 64, {"float32": 4}, tables, previous, cached_tokens=cached_tokens)


def test_prefix_hits_indexed_blocks_and_tokens_follow_the_block_manager():
    blocks = BlockManager(16, 4)
    prompt = list(range(100, 110))  # 10 tokens: two full blocks and a partial one
    first = blocks.match_prefix(prompt)
    blocks.append(first, prompt)
    blocks.release(first)  # the earlier turn ends: its two full blocks stay cached
    second = blocks.match_prefix(prompt + [7, 8])
    assert second.num_tokens == 8  # served by the prefix cache
    blocks.append(second, (prompt + [7, 8])[8:])
    snap = snapshot(blocks, {"1.0": second}, cached_tokens={"1.0": second.num_tokens - 4})
    first_blocks = second.block_ids[:2]
    assert snap.prefix_hits == {"1.0": 2}
    assert snap.sequence_tokens == {"1.0": 12} and snap.kv_tokens == 12
    indexed = tuple(sorted(b for b in blocks.hash_of if blocks.ref_count[b] > 0))
    assert snap.prefix_blocks == indexed and set(first_blocks) < set(indexed) and len(indexed) == 3

    blocks.append(second, [9])  # a token into a new block: the map changes, nothing is indexed yet
    after = snapshot(blocks, {"1.0": second}, snap, cached_tokens={"1.0": 8})
    assert after.prefix_hits is snap.prefix_hits and after.prefix_blocks == snap.prefix_blocks
    assert after.sequence_tokens == {"1.0": 13}
    blocks.append(second, [10])  # same blocks, same index: the parts are the previous snapshot's objects
    again = snapshot(blocks, {"1.0": second}, after, cached_tokens={"1.0": 8})
    assert again.prefix_blocks is after.prefix_blocks and again.block_refs is after.block_refs
    blocks.append(second, [11, 12])  # the block fills: the prefix cache indexes it
    full = snapshot(blocks, {"1.0": second}, again, cached_tokens={"1.0": 8})
    assert full.prefix_blocks == tuple(sorted(b for b in blocks.hash_of if blocks.ref_count[b] > 0))
    assert len(full.prefix_blocks) == 4 and full.block_refs is again.block_refs


def test_without_cached_tokens_no_block_is_called_a_hit():
    blocks = BlockManager(8, 4)
    table = blocks.match_prefix([1, 2, 3])
    blocks.append(table, [1, 2, 3])
    snap = snapshot(blocks, {"0.0": table})
    assert snap.prefix_hits == {} and snap.prefix_blocks == () and snap.sequence_tokens == {"0.0": 3}


def test_the_runners_snapshots_name_the_prefix_cache_hits_of_a_second_turn(hf_checkpoint):
    from engine.engine import Engine
    from engine.records import InstrumentOptions, LoadOptions, SamplingParams

    directory, _ = hf_checkpoint("llama")
    engine = Engine.load(directory, LoadOptions(device="cpu", kv_block_size=4))
    prompt = list(range(1, 40))
    options = dict(instrument=InstrumentOptions(memory=True))
    params = SamplingParams(temperature=0, max_new_tokens=3)
    first = list(engine.stream(engine.make_request(prompt, params, **options)))
    again = list(engine.stream(engine.make_request(prompt + [50], params, **options)))
    memory = [r.memory for r in again if getattr(r, "memory", None) is not None][-1]
    assert not [r.memory for r in first if getattr(r, "memory", None) is not None][-1].prefix_hits.get("0.0")
    name, hits = next(iter(memory.prefix_hits.items()))
    assert hits == 36 // 4  # the first turn's full prompt blocks, served from the cache
    assert memory.sequence_tokens[name] >= len(prompt) + 1


def test_a_draft_models_own_cache_is_counted_apart_from_the_targets_blocks(hf_checkpoint):
    from engine.engine import Engine
    from engine.records import InstrumentOptions, LoadOptions, SamplingParams, SpeculativeOptions

    directory, _ = hf_checkpoint("llama")
    engine = Engine.load(directory, LoadOptions(device="cpu", kv_block_size=4))
    request = engine.make_request(list(range(1, 20)), SamplingParams(temperature=0, max_new_tokens=6),
                                  instrument=InstrumentOptions(memory=True),
                                  speculative=SpeculativeOptions("self-layers:1", k=2))
    memory = [r.memory for r in engine.stream(request) if getattr(r, "memory", None) is not None]
    assert memory and all(m.draft_blocks_total > 0 for m in memory)
    assert memory[-1].draft_blocks_used > 0  # the drafter caught up on the context after the first token
    assert all(m.draft_bytes_per_block > 0 for m in memory)
    plain = engine.make_request(list(range(1, 20)), SamplingParams(temperature=0, max_new_tokens=2),
                                instrument=InstrumentOptions(memory=True))
    assert all(r.memory.draft_blocks_total == 0 for r in engine.stream(plain) if getattr(r, "memory", None))
