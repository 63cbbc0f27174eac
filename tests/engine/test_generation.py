"""The paged generation engine on tiny models: prefix reuse, forks, beams against transformers,
KV waste, instrumentation records, cancellation and running out of blocks."""
import pytest
import torch

from engine.runtime.runner import Runner
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.records import GenerationRequest, InstrumentOptions, RequestDone, SamplingParams, StepRecord

FULL_LOGITS = InstrumentOptions(stored_logits=-1)


def make_engine(directory, **kw):
    ckpt = load_checkpoint(directory)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    return Runner(model, ckpt.tokenizer, **{"num_blocks": 64, "block_size": 8, **kw})


def run(engine, *specs):
    """Submit all, step until done; return {request id: (records by seq, RequestDone)}."""
    ids = [engine.submit(s) for s in specs]
    records = {i: {} for i in ids}
    done = {}
    while engine.has_work():
        for item in engine.step():
            if isinstance(item, StepRecord):
                records[item.request_id].setdefault(item.seq_index, []).append(item)
            elif isinstance(item, RequestDone):
                done[item.request_id] = item
    return [(records[i], done[i]) for i in ids]


def recompute(model, tokens) -> torch.Tensor:
    cache = ContiguousKVCache(model.config, len(tokens))
    return model(torch.tensor([tokens]), cache.view(0, len(tokens)))[0, -1]


def stored(record: StepRecord) -> torch.Tensor:
    out = torch.empty(len(record.logit_ids))
    out[list(record.logit_ids)] = torch.tensor(record.logit_values)
    return out


def test_prefix_cache_computes_only_the_suffix_with_identical_logits(hf_checkpoint):
    directory, _ = hf_checkpoint("llama", max_position_embeddings=512)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 127, (200,), generator=g).tolist()
    a, b = prefix + [5, 6, 7], prefix + [9, 10, 11, 12]
    greedy = SamplingParams(temperature=0, max_new_tokens=3)
    engine = make_engine(directory)
    run(engine, GenerationRequest(tuple(a), greedy))
    before = engine.tokens_computed
    (recs, done), = run(engine, GenerationRequest(tuple(b), greedy, instrument=FULL_LOGITS))
    assert done.cached_prompt_tokens == 200  # 25 full blocks of 8
    assert engine.tokens_computed - before == len(b) - 200 + 2  # suffix prefill + 2 decode steps
    fresh = make_engine(directory)
    (fresh_recs, _), = run(fresh, GenerationRequest(tuple(b), greedy, instrument=FULL_LOGITS))
    assert len(recs[0]) == len(fresh_recs[0]) == 3  # every step compared, none dropped by zip
    for x, y in zip(recs[0], fresh_recs[0]):
        torch.testing.assert_close(stored(x), stored(y), atol=1e-5, rtol=0)


def test_forked_samples_diverge_without_corrupting_each_other(hf_checkpoint):
    directory, _ = hf_checkpoint("qwen3_moe")
    engine = make_engine(directory)
    prompt = list(range(3, 22))  # 19 tokens: the shared last block is partial, so forks copy it
    spec = GenerationRequest(tuple(prompt), SamplingParams(temperature=1.5, seed=3, max_new_tokens=12),
                             n=3, instrument=FULL_LOGITS)
    (recs, done), = run(engine, spec)
    samples = [r.token_ids for r in done.results]
    assert len(set(samples)) > 1, "the samples should differ at temperature 1.5"
    assert sorted(recs) == [0, 1, 2] and all(recs.values())  # every sample's steps are checked below
    for seq_index, steps in recs.items():
        tokens = list(prompt)
        for rec in steps:
            torch.testing.assert_close(stored(rec), recompute(engine.model, tokens), atol=1e-4, rtol=0)
            tokens.append(rec.token_id)
    stats = engine.blocks.stats()
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total


def test_beam_search_equals_transformers(hf_checkpoint):
    directory, hf_model = hf_checkpoint("llama")
    hf_model.generation_config.eos_token_id = None
    prompt = list(range(10, 26))
    ref = hf_model.generate(torch.tensor([prompt]), num_beams=4, do_sample=False, max_new_tokens=12,
                            early_stopping=False, length_penalty=1.0, pad_token_id=0)[0, len(prompt):].tolist()
    engine = make_engine(directory)
    (_, done), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=12,
                                                                            ignore_eos=True), beams=4))
    assert list(done.results[0].token_ids) == ref
    assert len(done.results) == 4 and engine.blocks.stats().used == 0


def test_best_of_returns_the_best_mean_logprob(hf_checkpoint):
    directory, _ = hf_checkpoint("qwen2")
    engine = make_engine(directory)
    (_, done), = run(engine, GenerationRequest((4, 5, 6), SamplingParams(temperature=1.2, seed=1, max_new_tokens=6),
                                               n=1, best_of=4))
    assert len(done.results) == 1
    (_, all_four), = run(engine, GenerationRequest((4, 5, 6), SamplingParams(temperature=1.2, seed=1,
                                                                             max_new_tokens=6), n=4))
    assert done.results[0].mean_logprob == pytest.approx(max(r.mean_logprob for r in all_four.results))


def test_kv_waste_of_eight_sequences_is_small(hf_checkpoint):
    directory, _ = hf_checkpoint("llama", max_position_embeddings=2048)
    engine = make_engine(directory, num_blocks=600, block_size=16)
    lengths = [97, 180, 233, 310, 402, 515, 640, 777]
    g = torch.Generator().manual_seed(4)
    for n in lengths:  # random prompts: no shared prefixes, so this measures paging alone
        prompt = tuple(torch.randint(1, 127, (n,), generator=g).tolist())
        engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True)))
    engine.step()  # every request admitted and prefilled: all eight are live
    mem = engine.memory()
    assert mem.kv_tokens == sum(lengths) + 8  # prompts + each one's first decoded token
    assert mem.kv_slots_filled == mem.kv_tokens
    assert sum(1 for r in mem.block_refs if r) == mem.kv_blocks_used and len(mem.block_tables) == 8
    contiguous_waste = 100 * (mem.kv_contiguous_bytes - mem.kv_tokens * mem.kv_bytes_per_block // 16) \
        / mem.kv_contiguous_bytes
    print(f"paged waste {mem.kv_waste_pct:.2f}% vs contiguous {contiguous_waste:.1f}%")
    assert mem.kv_waste_pct < 4.0 and contiguous_waste > 50


def test_records_carry_routing_and_attention_equal_to_the_reference(hf_checkpoint):
    directory, hf_model = hf_checkpoint("olmoe")
    engine = make_engine(directory)
    prompt = list(range(7, 30))
    options = InstrumentOptions(top_n=5, routing=True, attention_layers=(0, 1), memory=True)
    (recs, _), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=3),
                                               instrument=options))
    steps = recs[0]
    assert steps  # the loop below checks each step
    tokens = prompt + [r.token_id for r in steps]
    hf_model.config._attn_implementation = "eager"  # the plain reference: softmax(QK^T/sqrt(d)) materialised
    with torch.no_grad():
        ref = hf_model(torch.tensor([tokens]), output_attentions=True)
    for i, rec in enumerate(steps):
        assert [r.layer for r in rec.routing] == [0, 1]
        for r in rec.routing:
            assert len(r.expert_ids) == 2 and sum(r.router_probs) == pytest.approx(1.0, abs=1e-5)
        assert len(rec.attention) == 2 * engine.config.n_heads
        query_pos = len(prompt) - 1 + i  # the token whose forward produced this step's logits
        for a in rec.attention:
            assert sum(a.weights) == pytest.approx(1.0, abs=1e-5) and len(a.weights) == query_pos + 1
            expected = ref.attentions[a.layer][0, a.head, query_pos, :query_pos + 1]
            torch.testing.assert_close(torch.tensor(a.weights), expected, atol=1e-5, rtol=0)
            assert a.kv_head == a.head // (engine.config.n_heads // engine.config.n_kv_heads)
        assert rec.top_before[0].prob >= rec.top_before[-1].prob and rec.memory.kv_blocks_used > 0


def test_cancel_out_of_blocks_and_long_prompts_leave_nothing_behind(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    engine = make_engine(directory, num_blocks=6, block_size=4)  # 24 slots
    long_run = engine.submit(GenerationRequest((1, 2, 3), SamplingParams(temperature=0, max_new_tokens=40,
                                                                         ignore_eos=True)))
    short = engine.submit(GenerationRequest((4, 5), SamplingParams(temperature=0, max_new_tokens=2)))
    too_long = engine.submit(GenerationRequest(tuple(range(300)), SamplingParams(max_new_tokens=2)))
    cancelled = engine.submit(GenerationRequest((6, 7), SamplingParams(temperature=0, max_new_tokens=30)))
    engine.cancel(cancelled)
    done = {}
    while engine.has_work():
        done.update({x.request_id: x for x in engine.step() if isinstance(x, RequestDone)})
    assert "context holds 256" in done[too_long].error
    assert done[cancelled].results == () or done[cancelled].results[0].finish_reason == "cancelled"
    assert done[short].error is None and len(done[short].results[0].token_ids) <= 2
    assert "out of KV cache blocks" in done[long_run].error  # 40 tokens never fit in 24 slots
    stats = engine.blocks.stats()
    assert stats.used == 0 and stats.free + stats.cached_free == stats.total
    engine.blocks.check_invariants([])


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=3, max_new_tokens=6,
                   ignore_eos=True),
], ids=["greedy", "sampled"])
def test_step_record_summaries_equal_the_chain_on_the_full_logits(hf_checkpoint, params):
    """The record's probability, entropy and top tokens before and after the sampler are those of the
    chain run on the step's full logits (the record takes shortcuts: one top-k for the stored logits and
    the top before the sampler, no second chain when greedy)."""
    from engine.sampling import run_chain

    directory, _ = hf_checkpoint("llama")
    engine = make_engine(directory)
    prompt = [1, 5, 9, 13]
    options = InstrumentOptions(top_n=8, stored_logits=64)
    (records, _), = run(engine, GenerationRequest(tuple(prompt), params, instrument=options))
    generated = [r.token_id for r in records[0]]
    for i, rec in enumerate(records[0]):
        tokens = prompt + generated[:i]
        logits = recompute(engine.model, tokens).float()
        raw = torch.softmax(logits, -1)
        history = tokens if params.penalised else ()
        final = run_chain(logits, params, history).probs
        assert final[rec.token_id] > 0
        assert rec.prob == pytest.approx(float((raw if params.greedy else final)[rec.token_id]), abs=1e-5)
        assert rec.entropy == pytest.approx(float(torch.special.entr(final).sum()), abs=1e-4)
        # Compared as id -> probability (the reference runs other shapes, so near-ties may swap places).
        top = torch.topk(raw, 8)
        assert {t.token_id: t.prob for t in rec.top_before} == pytest.approx(
            dict(zip(top.indices.tolist(), top.values.tolist())), abs=1e-5)
        after = {t.token_id: t.prob for t in rec.top_after}
        kept = torch.topk(final, 8)
        assert after == pytest.approx({int(i): float(v) for i, v in zip(kept.indices, kept.values) if v > 0},
                                      abs=1e-5)
        # The stored logits: the step's own values, sorted, and nothing left out above the lowest kept.
        ids, values = torch.tensor(list(rec.logit_ids)), torch.tensor(list(rec.logit_values))
        assert len(ids) == 64 and bool((values[:-1] >= values[1:]).all())
        torch.testing.assert_close(values, logits[ids], atol=1e-4, rtol=0)
        left_out = torch.ones_like(logits, dtype=torch.bool)
        left_out[ids] = False
        assert float(logits[left_out].max()) <= float(values[-1]) + 1e-4

def test_memory_snapshots_share_what_did_not_change(hf_checkpoint):
    """Every step of an instrumented request carries a memory snapshot; the block map changes once a block
    of tokens, so consecutive snapshots share those parts (a long reply keeps every step's record)."""
    directory, _ = hf_checkpoint("llama")
    engine = make_engine(directory, num_blocks=64, block_size=4)
    request = GenerationRequest((1, 2, 3), SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True),
                                instrument=InstrumentOptions(memory=True))
    (records, _), = run(engine, request)
    snaps = [r.memory for r in records[0]]
    shared = 0
    for before, after in zip(snaps, snaps[1:]):
        assert after.kv_blocks_used == sum(1 for r in after.block_refs if r > 0)
        assert after.kv_tokens == before.kv_tokens + 1
        if after.block_refs == before.block_refs:
            assert after.block_refs is before.block_refs and after.block_tables is before.block_tables
            shared += 1
        else:  # a new block: its own map, and the table that grew
            assert after.block_refs is not before.block_refs and after.kv_blocks_used == before.kv_blocks_used + 1
    assert shared >= 6  # 12 tokens in blocks of 4: three new blocks, the other steps unchanged
