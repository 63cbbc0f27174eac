"""gpt-oss against transformers on tiny random checkpoints: attention sinks (in the logits and in the
recorded attention), alternating sliding / full layers, the biased router and clamped, biased experts,
quantized loading, and the paged engine (prefix sharing, a fork). MXFP4 experts: test_arch_gpt_oss_mxfp4.py;
GGUF: test_arch_gpt_oss_gguf.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.instrumentation.probe import Probe
from engine.instrumentation.replay import replay_attention
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.loaders.safetensors_dir import load_hf_dir
from engine.model import Decoder
from engine.quant import build_model
from engine.records import GenerationRequest, InstrumentOptions, LoadOptions, RequestDone, SamplingParams, StepRecord
from tests.engine.test_parity_hf import run_both

PREFILL, DECODE, TOL = 32, 16, 1e-4


def make_checkpoint(hf_checkpoint, seed: int = 0):
    """The tiny gpt-oss with sinks large enough to take a real share of every row (HF's random init
    leaves them near 0, where a sink takes ~1/(S+1) and a wrong formula could hide)."""
    directory, model = hf_checkpoint("gpt_oss", seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.randn(layer.self_attn.sinks.shape, generator=g) * 1.5 + 1.0)
    model.save_pretrained(directory)
    return directory, model


def compare(ours: Decoder, hf_model, seed: int = 0) -> float:
    """Max |logit difference| over a 32-token prefill and 16 decode steps (run_both for a built model)."""
    config = ours.config
    tokens = torch.randint(0, config.vocab_size, (1, PREFILL + DECODE), generator=torch.Generator().manual_seed(seed))
    cache = ContiguousKVCache(config, PREFILL + DECODE)
    with torch.no_grad():
        ref = hf_model(tokens[:, :PREFILL], use_cache=True)
        worst = (ref.logits - ours(tokens[:, :PREFILL], cache.view(0, PREFILL))).abs().max().item()
        for i in range(PREFILL, PREFILL + DECODE):
            ref = hf_model(tokens[:, i:i + 1], past_key_values=ref.past_key_values, use_cache=True)
            worst = max(worst, (ref.logits - ours(tokens[:, i:i + 1], cache.view(i, 1))).abs().max().item())
    return worst


def test_config_reads_sinks_windows_router_and_yarn(hf_checkpoint):
    directory, _ = make_checkpoint(hf_checkpoint)
    config, tensors, _ = load_hf_dir(directory)
    assert config.attn_sinks and config.sliding_windows == (8, None) and config.qkv_bias and config.o_bias
    moe = config.moe
    assert (moe.router, moe.router_bias, moe.expert_bias, moe.swiglu_limit, moe.swiglu_alpha) == \
        ("topk_softmax", True, True, 0.8, 1.702)
    s = config.rope_scaling
    assert (s.rope_type, s.factor, s.original_max_position, s.truncate) == ("yarn", 4.0, 64, False)
    assert tensors["layers.0.attn.sinks"].shape == (4,) and tensors["layers.0.mlp.b_gate"].shape == (4, 96)


def test_logits_match_transformers_with_sinks_and_a_window_shorter_than_the_sequence(hf_checkpoint):
    directory, hf_model = make_checkpoint(hf_checkpoint)
    assert run_both(directory, hf_model) <= TOL
    # the same with the fused fast paths (q/k/v in one matmul with its biases) the engine builds
    ckpt = load_checkpoint(directory)
    assert compare(build_model(ckpt.config, ckpt.tensors, "cpu", torch.float32, "none"), hf_model) <= TOL


def test_recorded_attention_with_sinks_equals_transformers_eager_weights(hf_checkpoint):
    directory, hf_model = make_checkpoint(hf_checkpoint)
    ckpt = load_checkpoint(directory)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    T = 24  # three windows of layer 0
    tokens = torch.randint(0, 128, (1, T), generator=torch.Generator().manual_seed(5))
    probe = Probe(InstrumentOptions(attention_layers=(0, 1)), 4, 2)
    model(tokens, ContiguousKVCache(ckpt.config, T).view(0, T), probe=probe)
    with torch.no_grad():
        ref = hf_model(tokens, output_attentions=True).attentions  # per layer [1, H, T, S], the sink dropped
    for layer in (0, 1):
        probs, sink = probe.attention[layer], probe.attention_sinks[layer]  # [1, H, T, S], [1, H, T]
        torch.testing.assert_close(probs, ref[layer].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(sink, 1 - ref[layer].float().sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(probs.sum(-1) + sink, torch.ones_like(sink), atol=1e-6, rtol=0)
        assert sink.mean() > 0.1, "sinks this large must take a visible share"
    assert (probe.attention[0][0, :, -1, :T - 8] == 0).all()  # layer 0 slides: only the last 8 are seen
    # the records the window draws: per token, each head's weights and its sink
    records = probe.attention_for(0, T)
    assert all(abs(sum(r.weights) + r.sink - 1) < 1e-5 for r in records)
    # the attention panel's replay carries the sinks as their own [H, Q] column
    view = replay_attention(model, tokens[0].tolist(), 1, (10, T))
    np.testing.assert_allclose(view.sinks, probe.attention_sinks[1][0, :, 10:].numpy(), atol=1e-6)
    np.testing.assert_allclose(view.weights.sum(-1) + view.sinks, 1, atol=1e-5)


def test_routing_probabilities_include_the_router_bias(hf_checkpoint):
    directory, hf_model = make_checkpoint(hf_checkpoint)
    ckpt = load_checkpoint(directory)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    tokens = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    captured = {}
    hooks = [layer.mlp.router.register_forward_hook(lambda m, i, out, n=n: captured.__setitem__(n, out))
             for n, layer in enumerate(hf_model.model.layers)]
    with torch.no_grad():
        hf_model(tokens)
    for h in hooks:
        h.remove()
    probe = Probe(InstrumentOptions(routing=True), 4, 2)
    model(tokens, ContiguousKVCache(ckpt.config, 16).view(0, 16), probe=probe)
    for layer, (logits, scores, indices) in captured.items():
        probs, ids, weights = probe.routing[layer]
        torch.testing.assert_close(probs, torch.softmax(logits.float(), -1), atol=1e-5, rtol=0)
        assert torch.equal(ids.sort(-1).values, indices.sort(-1).values)
        order = lambda i: i.argsort(-1)  # noqa: E731 -- compare weights expert by expert
        torch.testing.assert_close(weights.gather(1, order(ids)), scores.gather(1, order(indices)), atol=1e-5, rtol=0)
    assert len(torch.cat([r[1].flatten() for r in probe.routing.values()]).unique()) > 1


@pytest.mark.parametrize("mode", ["int8", "int4-g32"])
def test_quantized_experts_keep_their_biases_and_clamps(hf_checkpoint, mode):
    """Quantized loading of gpt-oss: the int8 / int4 experts (with float biases) compute what float experts
    holding the same round-trip weights compute."""
    from engine.quant import Int4Weight, Int8Weight

    def round_trip(w):
        q = Int8Weight.quantize(w) if mode == "int8" else Int4Weight.quantize(w, 32, keep_rows=True)
        return q.dequantize().float()

    directory, _ = make_checkpoint(hf_checkpoint)
    ckpt = load_checkpoint(directory)
    quantized = build_model(ckpt.config, ckpt.tensors, "cpu", torch.float32, mode, head=False, exact=True)
    state = dict(ckpt.tensors)
    for name, t in ckpt.tensors.items():
        if name.endswith((".w_gate", ".w_up", ".w_down")):
            state[name] = torch.stack([round_trip(w) for w in t])
        elif t.dim() == 2 and ".attn.w" in name:
            state[name] = round_trip(t)
    reference = Decoder.from_tensors(ckpt.config, state)
    tokens = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    ours = quantized(tokens, ContiguousKVCache(ckpt.config, 20).view(0, 20))
    ref = reference(tokens, ContiguousKVCache(ckpt.config, 20).view(0, 20))
    assert (ours - ref).abs().max().item() <= TOL


# ---- the paged engine ------------------------------------------------------------------------------

def run(engine, *requests):
    ids = [engine.submit(r) for r in requests]
    steps, done = {i: {} for i in ids}, {}
    while engine.has_work():
        for item in engine.step():
            if isinstance(item, StepRecord):
                steps[item.request_id].setdefault(item.seq_index, []).append(item)
            elif isinstance(item, RequestDone):
                done[item.request_id] = item
    return [(steps[i], done[i]) for i in ids]


def test_paged_engine_greedy_prefix_sharing_and_a_fork_equal_transformers(hf_checkpoint):
    directory, hf_model = make_checkpoint(hf_checkpoint)
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32", kv_block_size=8))
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    first = list(range(5, 25))  # 20 tokens: two full blocks of 8 shared with the second prompt
    second = first[:16] + [90, 91, 92, 93, 94]

    def reference(prompt):
        return hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(prompt):].tolist()

    (_, done_a), = run(engine, GenerationRequest(tuple(first), greedy))
    (_, done_b), = run(engine, GenerationRequest(tuple(second), greedy))
    assert list(done_a.results[0].token_ids) == reference(first)
    assert done_b.cached_prompt_tokens == 16
    assert list(done_b.results[0].token_ids) == reference(second)

    # a fork: two samples share the prompt's blocks (the last one partial, so it is copied on write);
    # each sample's every step equals transformers' logits over that sample's own tokens
    spec = GenerationRequest(tuple(first[:19]), SamplingParams(temperature=1.5, seed=4, max_new_tokens=12), n=2,
                             instrument=InstrumentOptions(stored_logits=-1))
    (steps, done), = run(engine, spec)
    samples = [r.token_ids for r in done.results]
    assert len(samples) == 2 and samples[0] != samples[1]
    for seq_index, records in steps.items():
        tokens = first[:19] + [r.token_id for r in records]
        with torch.no_grad():
            ref = hf_model(torch.tensor([tokens])).logits[0, 18:-1]  # the logits each step sampled from
        for rec, expected in zip(records, ref, strict=True):
            got = torch.empty(len(rec.logit_ids))
            got[list(rec.logit_ids)] = torch.tensor(rec.logit_values)
            torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert engine.kv_blocks_in_use == 0


# ---- the released configuration; other load paths ------------------------------------------------

# openai/gpt-oss-20b's config.json as published (transformers 4.55: v4 rope_scaling, rope_theta at the top)
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0, "eos_token_id": 200002,
    "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "initial_context_length": 4096,
    "initializer_range": 0.02, "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
    "model_type": "gpt_oss", "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                       "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                             "original_max_position_embeddings": 4096, "rope_type": "yarn",
                                             "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "use_cache": True, "vocab_size": 201088}


def test_the_released_config_reads_as_transformers_reads_it():
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from engine.config import ModelConfig
    from engine.layers.rope import rope_inv_freq

    c = ModelConfig.from_hf(GPT_OSS_20B)
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_theta) == (24, 64, 8, 64, 150000.0)
    assert c.sliding_windows == (128, None) * 12 and c.attn_sinks and all(c.moe_layers)
    assert (c.moe.n_experts, c.moe.n_experts_per_tok, c.moe.expert_hidden_dim, c.moe.swiglu_limit) == (32, 4, 2880, 7.0)
    hf = GptOssConfig(**{k: v for k, v in GPT_OSS_20B.items() if k != "quantization_config"})
    ref_freq, ref_attention = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    ours, attention = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_seq_len)
    torch.testing.assert_close(ours, ref_freq.float(), rtol=1e-6, atol=0)
    assert attention == pytest.approx(ref_attention)


def test_expert_offload_and_bf16(hf_checkpoint):
    directory, _ = make_checkpoint(hf_checkpoint)
    params = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)
    prompt = list(range(3, 20))
    tokens = lambda engine: [s.token_id for s in engine.generate(prompt, params) if hasattr(s, "token_id")]  # noqa: E731
    plain = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    offloaded = Engine.load(directory, LoadOptions(device="cpu", dtype="float32", expert_offload=True))
    assert tokens(plain) == tokens(offloaded)
    ckpt = load_checkpoint(directory, dtype=torch.bfloat16)
    half = Decoder.from_tensors(ckpt.config, ckpt.tensors, dtype=torch.bfloat16)
    full = plain.model
    ids = torch.tensor([prompt])
    a = half(ids, ContiguousKVCache(ckpt.config, len(prompt), dtype=torch.bfloat16).view(0, len(prompt)))
    b = full(ids, ContiguousKVCache(ckpt.config, len(prompt)).view(0, len(prompt)))
    assert ((a - b).norm() / b.norm()).item() < 0.05  # bf16 rounding, not a wrong formula
