"""DeepSeek-V2 (and -Lite) on tiny random checkpoints made by transformers: multi-head latent attention
whose KV cache holds the latent (sized from the config), group-limited routing with shared experts,
the paged engine (prefix sharing, forks) against a plain recompute and against transformers' greedy
tokens, latent-space decoding against expanding every latent, int8 loading, the static decode path. The
ARCHS entries run the shared parity/loader tests too; configs: test_arch_deepseek_v2_config.py."""
from __future__ import annotations

import pytest
import torch

from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.layers.mla import MLAttention
from engine.records import GenerationRequest, InstrumentOptions, LoadOptions, SamplingParams
from engine.runtime.kv_pool import kv_bytes_per_token
from tests.engine.test_generation import recompute, run, stored  # noqa: F401 (others import them from here)
from tests.engine.test_parity_hf import TOL, run_both

FLOAT = LoadOptions(device="cpu", dtype="float32", kv_block_size=8)
FULL_LOGITS = InstrumentOptions(stored_logits=-1)
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}


class RoutingProbe:
    def __init__(self):
        self.routing = []  # (layer, probs [N, E], expert_ids [N, A], gate weights [N, A])

    def record_routing(self, layer, probs, expert_ids, weights):
        self.routing.append((layer, probs.clone(), expert_ids.clone(), weights.clone()))

    def wants_attention(self, layer):
        return False


def test_yarn_softmax_scale_matches_transformers(hf_checkpoint):
    directory, hf_model = hf_checkpoint("deepseek_v2", rope_parameters=YARN)
    assert run_both(directory, hf_model) <= TOL
    engine = Engine.load(directory, FLOAT)
    attn = engine.model.layers[0].attn
    mscale = 0.1 * 1.0 * torch.log(torch.tensor(4.0)).item() + 1.0
    assert attn.scale == pytest.approx(24 ** -0.5 * mscale ** 2)  # (nope 16 + rope 8) ** -0.5 · mscale²


def test_group_limited_routing_keeps_the_best_groups(hf_checkpoint):
    directory, hf_model = hf_checkpoint("deepseek_v2")
    probe = RoutingProbe()
    assert run_both(directory, hf_model, probe=probe) <= TOL
    assert {layer for layer, *_ in probe.routing} == {1}  # layer 0 is dense (first_k_dense_replace = 1)
    probs = torch.cat([p for _, p, _, _ in probe.routing])  # [N, 8]
    ids = torch.cat([i for _, _, i, _ in probe.routing])  # [N, 3]
    weights = torch.cat([w for _, _, _, w in probe.routing])
    best_groups = probs.view(-1, 4, 2).amax(-1).topk(2, dim=-1).indices  # [N, 2]
    assert ((ids // 2).unsqueeze(-1) == best_groups.unsqueeze(1)).any(-1).all(), "an expert outside the kept groups"
    plain = probs.topk(3, dim=-1).indices.sort(-1).values
    assert (plain != ids.sort(-1).values).any(-1).sum() > 0, "no token's choice was changed by the group limit"
    torch.testing.assert_close(weights, probs.gather(1, ids) * 1.5)  # routed_scaling_factor, no renormalisation
    assert len(ids.unique()) > 2


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v2-lite"])
def test_kv_pool_stores_the_latent(arch, hf_checkpoint):
    directory, hf_model = hf_checkpoint(arch)
    cfg = hf_model.config
    engine = Engine.load(directory, FLOAT)
    config, pool = engine.config, engine._runner.pool
    latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim  # 32 + 8 values a token and layer
    assert pool.k.shape[2:] == (1, cfg.kv_lora_rank) and pool.v.shape[2:] == (1, cfg.qk_rope_head_dim)
    assert kv_bytes_per_token(config, torch.float32) == cfg.num_hidden_layers * latent * 4
    assert pool.nbytes == pool.num_blocks * pool.block_size * cfg.num_hidden_layers * latent * 4
    # the default 0.5 GiB budget buys blocks by the latent's size, not by per-head K/V's
    assert pool.num_blocks == (1 << 29) // (8 * cfg.num_hidden_layers * latent * 4)
    per_head = cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    mem = engine.memory()
    assert (mem.kv_latent_values, mem.kv_per_head_values) == (latent, per_head)
    assert mem.kv_bytes_per_block == 8 * cfg.num_hidden_layers * latent * 4
    cache = ContiguousKVCache(config, 10)
    assert cache.nbytes == 10 * kv_bytes_per_token(config, torch.float32)
    facts = engine.facts()  # what the routing panel divides the experts by
    assert (facts.expert_groups, facts.expert_groups_kept) == ((4, 2) if arch == "deepseek_v2" else (1, 0))


def check_against_recompute(model, prompt, steps):
    tokens = list(prompt)
    for rec in steps:
        torch.testing.assert_close(stored(rec), recompute(model, tokens), atol=1e-4, rtol=0)
        tokens.append(rec.token_id)


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v2-lite"])
def test_paged_engine_prefix_sharing_and_forks(arch, hf_checkpoint):
    directory, hf_model = hf_checkpoint(arch)
    engine = Engine.load(directory, FLOAT)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 127, (32,), generator=g).tolist()  # 4 whole blocks of 8
    a, b = prefix + [5, 6, 7], prefix + [9, 10, 11, 12]
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)

    def reference(prompt):
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
        return out[0, len(prompt):].tolist()

    (recs_a, done_a), = run(engine, GenerationRequest(tuple(a), greedy, instrument=FULL_LOGITS))
    (recs_b, done_b), = run(engine, GenerationRequest(tuple(b), greedy, instrument=FULL_LOGITS))
    assert done_b.cached_prompt_tokens == 32  # b's prefix came from a's blocks: latents shared, not recomputed
    assert list(done_a.results[0].token_ids) == reference(a)
    assert list(done_b.results[0].token_ids) == reference(b)
    check_against_recompute(engine.model, a, recs_a[0])
    check_against_recompute(engine.model, b, recs_b[0])
    # A fork: two samples share the prompt's blocks (19 tokens: the last block is partial, so it is copied).
    prompt = list(range(3, 22))
    (recs, done), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=1.5, seed=3,
                                                                                max_new_tokens=10),
                                                  n=2, instrument=FULL_LOGITS))
    assert sorted(recs) == [0, 1] and len({r.token_ids for r in done.results}) == 2
    for steps in recs.values():
        check_against_recompute(engine.model, prompt, steps)
    stats = engine._runner.blocks.stats()
    assert engine.kv_blocks_in_use == 0 and stats.used == 0 and stats.free + stats.cached_free == stats.total


def test_int8_loading_quantizes_the_latent_projections(hf_checkpoint):
    from engine.quant import QuantLinear

    directory, _ = hf_checkpoint("deepseek_v2")
    float_engine = Engine.load(directory, FLOAT)
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32", kv_block_size=8, quant="int8",
                                                quant_exact=True))
    attn = engine.model.layers[1].attn
    assert isinstance(attn, MLAttention)
    assert all(isinstance(getattr(attn, name), QuantLinear) for name in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo"))
    prompt = list(range(4, 30))
    ours, ref = recompute(engine.model, prompt), recompute(float_engine.model, prompt)
    assert (ours - ref).abs().max() < 0.05 * ref.abs().max()  # int8 per-channel error, not a wrong layout
    (recs, done), = run(engine, GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=6,
                                                                                ignore_eos=True),
                                                  instrument=FULL_LOGITS))
    check_against_recompute(engine.model, prompt, recs[0])
    assert engine.kv_blocks_in_use == 0


def test_attention_replay_and_head_interventions(hf_checkpoint):
    from engine.records import Intervention

    directory, _ = hf_checkpoint("deepseek_v2-lite")
    engine = Engine.load(directory, FLOAT)
    ids = list(range(5, 25))
    view = engine.attention(ids, 1, (0, len(ids)))
    rows = torch.from_numpy(view.weights)  # [H, Q, S]
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]), atol=1e-5, rtol=0)
    assert torch.triu(rows, diagonal=1).abs().max() == 0  # causal
    assert set(view.kv_group) == {0}  # every head reads the one cached latent: no per-head KV groups to show
    before = recompute(engine.model, ids)
    engine.set_interventions([Intervention("head", 1, 0, 0.0)])
    after = recompute(engine.model, ids)
    engine.set_interventions([])
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(recompute(engine.model, ids), before, atol=0, rtol=0)


def test_static_decode_path_over_the_latent_pool(hf_checkpoint):
    """The GPU's batch-1 static decode path (run eagerly here: no CUDA) reads the latent pool through fixed
    bucket buffers; on an all-dense MLA model (graphable: no MoE layer) it equals the paged view step by step."""
    from engine.loaders import load_checkpoint
    from engine.model import Decoder
    from engine.runtime.runner import Runner
    from engine.runtime.static_decode import StaticDecoder, graphable

    directory, _ = hf_checkpoint("deepseek_v2", first_k_dense_replace=2)
    ckpt = load_checkpoint(directory)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    assert graphable(model, None)
    plain, static = (Runner(model, ckpt.tokenizer, num_blocks=64, block_size=8) for _ in range(2))
    static.static = StaticDecoder(model, static.pool, use_graphs=False)
    calls, logits = [], {id(plain): [], id(static): []}
    decode = static.static.decode
    static.static.decode = lambda *a: calls.append(a) or decode(*a)
    request = GenerationRequest(tuple(range(3, 40)), SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True))
    for runner in (plain, static):
        forward = runner._forward
        runner._forward = lambda *a, f=forward, s=logits[id(runner)]: s.append(f(*a)) or s[-1]
        (_, done), = run(runner, request)
    assert len(calls) == 29 and len(logits[id(plain)]) == len(logits[id(static)]) == 30
    for a, b in zip(logits[id(plain)], logits[id(static)]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


class AttentionProbe(RoutingProbe):
    def __init__(self):
        super().__init__()
        self.attention = {}

    def wants_attention(self, layer):
        return True

    def record_attention(self, layer, probs):
        self.attention[layer] = probs.clone()


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v2-lite"])
def test_latent_space_decoding_equals_expanding_every_latent(arch, hf_checkpoint, monkeypatch):
    """A decode step attends in latent space (kv_b folded into q and the output); forced to expand every
    cached latent instead it gives the same logits and the same attention rows (the probe's explicit path)."""
    directory, _ = hf_checkpoint(arch)
    model = Engine.load(directory, FLOAT).model
    attn = model.layers[0].attn
    assert attn._absorbs(1) and not attn._absorbs(32)  # decoding in latent space, a 32-token prefill expanded
    tokens = torch.randint(0, 127, (1, 21), generator=torch.Generator().manual_seed(5))

    def decode_step():
        cache, probe = ContiguousKVCache(model.config, 21), AttentionProbe()
        model(tokens[:, :20], cache.view(0, 20))
        return model(tokens[:, 20:], cache.view(20, 1))[0, -1], model(tokens[:, 20:], cache.view(20, 1), probe)[0, -1], \
            probe.attention

    latent, latent_probed, latent_rows = decode_step()
    monkeypatch.setattr(MLAttention, "_absorbs", lambda self, T: False)
    expanded, expanded_probed, expanded_rows = decode_step()
    torch.testing.assert_close(latent, expanded, atol=1e-5, rtol=0)
    torch.testing.assert_close(latent_probed, expanded_probed, atol=1e-5, rtol=0)
    assert sorted(latent_rows) == [0, 1] and latent_rows[0].shape == (1, 4, 1, 21)
    for layer in latent_rows:
        torch.testing.assert_close(latent_rows[layer], expanded_rows[layer], atol=1e-6, rtol=0)
