"""The speed paths compute what the plain paths compute: fused q/k/v and gate/up projections (float,
int8, packed int4), the fused fp32 RMSNorm, and the static-shape decode step that CUDA graphs capture
(run eagerly here, on the CPU). Speed itself is measured in docs/benchmarks.md, never here."""
import pytest
import torch

from engine.runtime.runner import Runner
from engine.kv_cache import ContiguousKVCache
from engine.layers.norm import RMSNorm
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.quant import build_model, fuse_projections, kernels, quantize_model
from engine.records import GenerationRequest, RequestDone, SamplingParams, StepRecord
from engine.runtime.static_decode import StaticDecoder


def _logits(model, tokens):
    cache = ContiguousKVCache(model.config, tokens.shape[1] + 1, batch=tokens.shape[0])
    prefill = model(tokens, cache.view(0, tokens.shape[1]))
    step = model(tokens[:, -1:], cache.view(tokens.shape[1], 1))
    return prefill, step


# Packed int4 (the CPU kernel's layout) stacks only whole 64-row blocks: these sizes make every part one.
WIDE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("arch,overrides", [("llama", {}), ("qwen2", {}), ("qwen3", {}), ("qwen2_moe", {}),
                                            ("llama", WIDE), ("qwen2", WIDE)])
@pytest.mark.parametrize("mode", ["none", "int8", "int4-g32"])
def test_fused_projections_give_the_same_numbers(hf_checkpoint, arch, overrides, mode):
    path, _ = hf_checkpoint(arch, **overrides)
    ckpt = load_checkpoint(path)
    # PyTorch's kernels: Glassbox's round activations to 8 bits, where the 1-ulp SiLU difference below can
    # flip a rounding (tests/engine/test_quant_kernels.py checks fused against plain with them).
    with kernels.disabled():
        plain = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), mode)
        fused = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), mode)
    n = fuse_projections(fused)
    dense_mlps = sum(not m for m in ckpt.config.moe_layers)
    shared = sum(1 for b in fused.layers if b.is_moe and b.mlp.shared is not None)
    if mode != "int4-g32" or overrides:  # every attention, every dense or shared SwiGLU
        assert n == ckpt.config.n_layers + dense_mlps + shared
    tokens = torch.randint(0, ckpt.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    # Not bit for bit: the fused layer is a wider matmul (the BLAS / int kernel picks its blocking by shape
    # and CPU) and SiLU then runs on a strided half of it (a different vector loop on AVX-512: 1 ulp apart).
    for a, b in zip(_logits(plain, tokens), _logits(fused, tokens)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_fusing_then_quantizing_equals_quantizing_then_fusing(hf_checkpoint):
    """The self-int4 drafter quantizes a copy of a model that was fused at load."""
    path, _ = hf_checkpoint("llama")
    ckpt = load_checkpoint(path)
    late = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), "int4-g32")
    fuse_projections(late)
    early = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    fuse_projections(early)
    early = quantize_model(early, "int4-g32")
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features > 2 for m in early.modules())
    tokens = torch.randint(0, ckpt.config.vocab_size, (1, 7))
    # The same int4 values, but not the same shapes: the packed layout stacks only whole 64-row blocks, so
    # `late` keeps this tiny model's q/k/v and gate/up apart while `early` runs them as one wide kernel call.
    for a, b in zip(_logits(late, tokens), _logits(early, tokens)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_fused_rms_norm_equals_the_formula():
    norm = RMSNorm(96, 1e-6)
    norm.weight.data = torch.randn(96)
    x = torch.randn(3, 5, 96) * 4
    x32 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), norm.weight * x32, rtol=0, atol=1e-6)
    xb = x.bfloat16()  # bf16 keeps the reference path (cast back before scaling)
    ref = norm.weight * (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(norm(xb), ref)


def _greedy(engine, prompt, n, **kw):
    rid = engine.submit(GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=n), **kw))
    tokens = []
    while engine.has_work():
        for item in engine.step():
            if isinstance(item, StepRecord) and item.request_id == rid:
                tokens.append(item.token_id)
            elif isinstance(item, RequestDone):
                assert item.error is None
    return tokens


@pytest.mark.parametrize("arch,overrides", [("llama", {}), ("qwen2", {"use_sliding_window": True,
                                                                      "sliding_window": 24, "max_window_layers": 1}),
                                            ("gemma2", {}), ("gemma3", {"eos_token_id": 127})])  # soft-caps; local RoPE
def test_static_decode_step_equals_the_paged_view(hf_checkpoint, arch, overrides):
    """The step CUDA graphs capture (fixed buckets, padding masked on the device) gives the same logits
    as the ordinary paged view, across bucket boundaries (64 -> 128) and sliding windows."""
    path, _ = hf_checkpoint(arch, max_position_embeddings=512, **overrides)
    ckpt = load_checkpoint(path)
    model = Decoder.from_tensors(ckpt.config, ckpt.tensors)
    prompt = torch.randint(0, ckpt.config.vocab_size, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    plain = Runner(model, ckpt.tokenizer, num_blocks=64, block_size=8)
    static = Runner(model, ckpt.tokenizer, num_blocks=64, block_size=8)
    static.static = StaticDecoder(model, static.pool, use_graphs=False)
    steps = []
    real = static.static.decode
    static.static.decode = lambda *a: steps.append(a) or real(*a)
    # logits step by step (both engines see the same tokens while they agree)
    ref_logits, got_logits = [], []
    for engine, sink in ((plain, ref_logits), (static, got_logits)):
        forward = engine._forward
        engine._forward = lambda tables, chunks, probe, f=forward, s=sink: s.append(f(tables, chunks, probe)) or s[-1]
        _greedy(engine, prompt, 40)
    assert len(steps) == 39 and {static.static.bucket_for(a[1] + 1) for a in steps} == {64, 128}
    assert len(ref_logits) == len(got_logits) == 40  # the prefill and 39 decode steps, all compared below
    for a, b in zip(ref_logits, got_logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [x.argmax() for x in ref_logits] == [x.argmax() for x in got_logits]


@pytest.mark.slow
def test_default_model_fused_packed_equals_unfused(default_gguf):
    """The shipped Q4_1 file kept packed: fused and unfused layers give the same logits (up to the int4
    kernel's blocking for a wider N) and the same tokens."""
    ckpt = load_checkpoint(default_gguf, keep_packed=True)
    fused = build_model(ckpt.config, ckpt.tensors, torch.device("cpu"), torch.float32, "auto")
    ckpt = load_checkpoint(default_gguf, keep_packed=True)
    plain = build_model(ckpt.config, ckpt.tensors, torch.device("cpu"), torch.float32, "auto", fuse=False)
    assert fused.layers[0].attn.wqkv is not None and plain.layers[0].attn.wqkv is None
    tokens = torch.tensor([ckpt.tokenizer.encode("The capital of France is Paris, and the capital of Italy is")])
    for a, b in zip(_logits(plain, tokens), _logits(fused, tokens)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    outs = []
    for model in (plain, fused):
        engine = Runner(model, ckpt.tokenizer, num_blocks=64, block_size=16)
        # Both through the Python layers, which this test is about: only the fused model qualifies for the C++
        # decode step, whose float order differs (tests/engine/test_fused_decode.py compares the two).
        engine.fused = None
        outs.append(_greedy(engine, tokens[0].tolist(), 24))
    assert outs[0] == outs[1]
