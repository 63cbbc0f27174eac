"""Quantization (engine/quant): packing round trips, kernels against dequantized matmuls, GGUF
blocks against the `gguf` package's reference dequantizer, module swaps against the float model,
and the packed default model against its dequantized self."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.records import LoadOptions
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.quant import Int4Weight, Int8Weight, PackedGGUF, QuantLinear, quantize_model
from engine.records import GenerationDone, SamplingParams

SHAPES = [(16, 64), (7, 33), (96, 100), (48, 128), (13, 257), (32, 384)]  # N not /16, K not /g included


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("N,K", SHAPES)
def test_int8_round_trip_and_exact_matmul(N, K):
    torch.manual_seed(N * K)
    w = torch.randn(N, K)
    q = Int8Weight.quantize(w).to("cpu", torch.float32)
    deq = q.dequantize()
    assert deq.shape == w.shape
    assert ((deq - w).abs() <= q.scale[:, None] / 2 + 1e-7).all()  # round to nearest: half a step at most
    again = Int8Weight(torch.round(deq / q.scale[:, None]).to(torch.int8), q.scale)  # pack(unpack(x)) == x
    assert torch.equal(again.q, q.q)
    x = torch.randn(3, 5, K)
    assert rel_err(q.matmul(x), x @ deq.T) <= 1e-5


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("N,K", SHAPES)
def test_int4_round_trip_and_exact_matmul(N, K, group):
    torch.manual_seed(N * K + group)
    w = torch.randn(N, K)
    q = Int4Weight.quantize(w, group, keep_rows=True).to("cpu", torch.float32)
    deq = q.dequantize()
    assert deq.shape == (N, K)
    step = (w.abs().max() * 2 / 15).item()
    assert (deq - w).abs().max().item() <= step / 2 + 1e-6
    x = torch.randn(4, K)
    assert rel_err(q.matmul(x), x @ deq.T) <= 1e-5  # the CPU kernel on padded shapes
    ids = torch.tensor([[0, N - 1], [N // 2, 0]])
    assert torch.allclose(q.rows(ids), deq[ids], atol=1e-6)
    # dropping the nibbles and recovering them from the kernel's layout loses nothing
    lean = Int4Weight.quantize(w, group).to("cpu", torch.float32)
    assert torch.equal(lean.dequantize(), deq)


def test_int4_rejects_unknown_group_size():
    with pytest.raises(ValueError, match="group size"):
        Int4Weight.quantize(torch.randn(16, 64), 48)


def test_bf16_compute_path_is_close_to_the_exact_one():
    torch.manual_seed(0)
    w, x = torch.randn(64, 192), torch.randn(2, 192)
    for weight in (Int8Weight.quantize(w), Int4Weight.quantize(w, 32)):
        exact = weight.to("cpu", torch.float32).matmul(x)
        fast = QuantLinear(weight.to("cpu", torch.bfloat16))(x)
        assert fast.dtype == torch.float32
        assert rel_err(fast, exact) <= 2e-2


# ---- GGUF blocks -----------------------------------------------------------------------------

def _reference(kind: str, raw: np.ndarray, shape) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(raw.reshape(shape[0], -1), gguf.GGMLQuantizationType[kind]).astype(np.float32)


def _synthetic_blocks(kind: str, rows: int, blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
    raw = rng.integers(0, 256, size=(rows, blocks, size), dtype=np.uint8)
    scales = rng.normal(0, 0.05, size=(rows, blocks, 2 if kind == "Q4_1" else 1)).astype(np.float16)
    raw[..., : scales.shape[-1] * 2] = scales.view(np.uint8).reshape(rows, blocks, -1)
    return raw


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_synthetic_blocks_dequantize_bit_for_bit(kind):
    raw = _synthetic_blocks(kind, rows=24, blocks=6, seed=1)
    shape = (24, 6 * 32)
    blocks = PackedGGUF(kind, shape, raw)
    ref = _reference(kind, raw, shape)
    assert np.array_equal(blocks.dequantize().numpy().view(np.uint32), ref.view(np.uint32))
    weight = blocks.to_weight(keep_rows=True).to("cpu", torch.float32)
    assert torch.equal(weight.dequantize(), torch.from_numpy(ref))  # the int layouts hold the same values
    x = torch.randn(3, shape[1])
    assert rel_err(weight.matmul(x), x @ torch.from_numpy(ref).T) <= 1e-5


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K", "Q5_K"])
def test_k_quants_dequantize_as_the_reference(kind, tmp_path):
    """K-quants go through our loader's dequantization path (_to_tensor) unchanged."""
    import gguf

    from engine.loaders.gguf_file import _TensorInfo, _to_tensor

    qtype = gguf.GGMLQuantizationType[kind]
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, size=(8, block_bytes), dtype=np.uint8)
    # keep the fp16 super-block scales small and finite: they sit at the end (d, and dmin before it)
    tail = 4 if kind in ("Q4_K", "Q5_K") else 2
    fp16 = rng.normal(0, 0.01, size=(8, tail // 2)).astype(np.float16).view(np.uint8)
    if kind == "Q6_K":
        raw[:, -2:] = fp16
    else:
        raw[:, :4] = fp16
    info = _TensorInfo("t", (8, 256), kind, 0, raw.nbytes)
    ours = _to_tensor(info, raw.reshape(-1), tmp_path).numpy()
    assert np.array_equal(ours.view(np.uint32), _reference(kind, raw, (8, 256)).view(np.uint32))


def test_real_default_model_tensors_dequantize_bit_for_bit(default_gguf):
    from engine.loaders.gguf_file import _open

    _, infos, data = _open(default_gguf)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
        t = infos[name]
        raw = np.asarray(data[t.offset:t.offset + t.nbytes])
        ref = _reference(t.kind, raw, t.shape)
        blocks = PackedGGUF(t.kind, t.shape, raw)
        assert np.array_equal(blocks.dequantize().numpy().view(np.uint32), ref.view(np.uint32)), name
        assert torch.equal(blocks.to_weight().to("cpu", torch.float32).dequantize(), torch.from_numpy(ref)), name


# ---- module swaps ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "qwen2_moe"])
@pytest.mark.parametrize("mode", ["int8", "int4-g32"])
def test_quantized_model_equals_float_model_with_dequantized_weights(hf_checkpoint, arch, mode):
    """Every linear (attention, MLP, each expert, the shared expert, the head) is swapped, and the
    exact path computes what the float model computes with the dequantized weights."""
    path, _ = hf_checkpoint(arch)
    ckpt = load_checkpoint(path)
    model = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), mode, exact=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n_experts = ckpt.config.moe.n_experts if ckpt.config.moe else -1
    assert all(m.out_features in (n_experts, 1) for m in linears)  # only routers (and a shared gate) stay float
    # rebuild a float model holding the dequantized weights
    reference = Decoder.from_tensors(ckpt.config, _dequantized_state(model, ckpt.tensors))
    tokens = torch.randint(0, ckpt.config.vocab_size, (2, 12))
    ours = model(tokens, ContiguousKVCache(ckpt.config, 12, batch=2).view(0, 12))
    ref = reference(tokens, ContiguousKVCache(ckpt.config, 12, batch=2).view(0, 12))
    assert rel_err(ours, ref) <= 1e-4
    weights = model.weight_bytes()
    assert weights["int8"] > 0 and (mode == "int8" or weights["int4"] > 0)


def _dequantized_state(model, float_tensors) -> dict:
    state = dict(float_tensors)
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            state[name + ".weight"] = module.qweight.dequantize().float()
        if hasattr(module, "gate") and isinstance(getattr(module, "gate"), list):  # QuantSparseMoE
            for part in ("gate", "up", "down"):
                state[f"{name}.w_{part}"] = torch.stack([w.dequantize().float() for w in getattr(module, part)])
    if "lm_head.weight" in state and model.config.tie_embeddings:
        del state["lm_head.weight"]
    state["embed.weight"] = model.embed.qweight.dequantize().float()  # the table is quantized too
    return state


# ---- the default model: packed Q4_1 against dequantized Q4_1 -----------------------------------

@pytest.mark.slow
def test_packed_default_model_generates_like_the_dequantized_one(default_gguf):
    packed = Engine.load(default_gguf, LoadOptions(device="cpu", dtype="float32", quant="auto", quant_exact=True))
    dense = Engine.load(default_gguf, LoadOptions(device="cpu", dtype="float32", quant="none"))
    weights = packed.model.weight_bytes()
    assert weights.get("int4", 0) > 60e6 and weights.get("float32", 0) < 1e6  # runs from packed 4-bit weights
    for question in ("What is the capital of France?", "Write a haiku about autumn.", "List three fruits."):
        prompt = packed.chat_prompt_ids([{"role": "user", "content": question}])
        params = SamplingParams(temperature=0, max_new_tokens=32)
        a = [x for x in packed.generate(prompt, params) if isinstance(x, GenerationDone)][0]
        b = [x for x in dense.generate(prompt, params) if isinstance(x, GenerationDone)][0]
        assert a.token_ids == b.token_ids, question
