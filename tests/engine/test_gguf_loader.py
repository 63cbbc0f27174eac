"""GGUF: the default model equals transformers' reading of it, tiny GGUFs of every supported type
and architecture round-trip to their canonical tensors, and each damaged file ends in a
ModelFormatError naming the file and the problem."""
import math
import time

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.errors import ModelFormatError, UnsupportedArchitecture
from engine.loaders.gguf_file import config_from_gguf, load_gguf, read_metadata

RNG_TYPES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # f16 scale offsets


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter layout (pairs instead of halves per head), written independently of the loader."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pack(values: np.ndarray, qtype: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """(bytes or floats to write, the float values the file then holds)."""
    if qtype == "F32":
        return values, values
    if qtype in RNG_TYPES:  # gguf-py cannot quantize K-types: random blocks with small, sane scales
        size, block_bytes = gguf.GGML_QUANT_SIZES[Q[qtype]]
        packed = rng.integers(0, 256, (*values.shape[:-1], values.shape[-1] // size, block_bytes), dtype=np.uint8)
        for at in RNG_TYPES[qtype]:
            packed[..., at:at + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        packed = packed.reshape(*values.shape[:-1], -1)
    else:
        packed = gguf.quants.quantize(values, Q[qtype])
    return packed, gguf.quants.dequantize(packed, Q[qtype])


def write_gguf(path, arch, kv: dict, tensors: dict):
    """kv: key -> value (ints as uint32, floats as float32) ; tensors: name -> (array, qtype or None)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            (w.add_uint32 if value < 2**32 else w.add_uint64)(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, (array, qtype) in tensors.items():
        w.add_tensor(name, array, raw_dtype=None if qtype in (None, "F32") or array.dtype != np.uint8 else Q[qtype])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


def write_tiny(path, arch="llama", qtype="F32", dim=32, n_heads=4, n_kv=2, head_dim=None, hidden=64, vocab=64,
               n_layers=2, experts=0, shared=0, tied=False, skip=(), kv=None, seed=0):
    """A small random model as llama.cpp's converter writes it -> the canonical tensors the file holds."""
    rng = np.random.default_rng(seed)
    d = head_dim or dim // n_heads
    p = arch
    meta = {f"{p}.block_count": n_layers, f"{p}.context_length": 128, f"{p}.embedding_length": dim,
            f"{p}.feed_forward_length": hidden, f"{p}.attention.head_count": n_heads,
            f"{p}.attention.head_count_kv": n_kv, f"{p}.attention.layer_norm_rms_epsilon": 1e-5,
            f"{p}.rope.freq_base": 10000.0, "tokenizer.ggml.tokens": [f"t{i}" for i in range(vocab)]}
    if head_dim:
        meta[f"{p}.attention.key_length"] = meta[f"{p}.attention.value_length"] = head_dim
    if experts:
        meta |= {f"{p}.expert_count": experts, f"{p}.expert_used_count": 2, f"{p}.expert_feed_forward_length": hidden}
    if shared:
        meta[f"{p}.expert_shared_feed_forward_length"] = shared
    meta |= kv or {}
    tensors, canon = {}, {}
    permuted = arch == "llama"

    def add(gguf_name, canon_name, shape, quantize=True, heads=0):
        values = (rng.standard_normal(shape) * (1 if quantize else 0.1) + (0 if quantize else 1)).astype(np.float32)
        stored = permute_qk(values, heads) if heads and permuted else values
        written, held = pack(stored, qtype if quantize else "F32", rng)
        if gguf_name not in skip:
            tensors[gguf_name] = (written, qtype if quantize else None)
            held = torch.from_numpy(held.reshape(shape).copy())
            canon[canon_name] = torch.from_numpy(permute_qk(held.numpy(), heads // 1) if False else held.numpy())
            if heads and permuted:  # what HF expects: the converter's rows put back in order
                inverse = held.reshape(heads, d // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)
                canon[canon_name] = inverse
            canon[canon_name + "#source"] = torch.from_numpy(values)

    add("token_embd.weight", "embed.weight", (vocab, dim))
    add("output_norm.weight", "norm.weight", (dim,), quantize=False)
    if not tied:
        add("output.weight", "lm_head.weight", (vocab, dim))
    for i in range(n_layers):
        b, c = f"blk.{i}.", f"layers.{i}."
        add(b + "attn_norm.weight", c + "attn_norm.weight", (dim,), quantize=False)
        add(b + "ffn_norm.weight", c + "mlp_norm.weight", (dim,), quantize=False)
        for name, heads in (("q", n_heads), ("k", n_kv), ("v", 0)):
            add(b + f"attn_{name}.weight", c + f"attn.w{name}.weight", ((heads or n_kv) * d, dim), heads=heads)
            if arch in ("qwen2", "qwen2moe"):
                add(b + f"attn_{name}.bias", c + f"attn.w{name}.bias", ((heads or n_kv) * d,), quantize=False)
        add(b + "attn_output.weight", c + "attn.wo.weight", (dim, n_heads * d))
        if arch in ("qwen3", "qwen3moe", "olmoe"):
            q, k = (d, d) if arch != "olmoe" else (n_heads * d, n_kv * d)
            add(b + "attn_q_norm.weight", c + "attn.q_norm.weight", (q,), quantize=False)
            add(b + "attn_k_norm.weight", c + "attn.k_norm.weight", (k,), quantize=False)
        if experts:
            add(b + "ffn_gate_inp.weight", c + "mlp.router.weight", (experts, dim), quantize=False)
            for part, shape in (("gate", (experts, hidden, dim)), ("up", (experts, hidden, dim)),
                                ("down", (experts, dim, hidden))):
                add(b + f"ffn_{part}_exps.weight", c + f"mlp.w_{part}", shape)
            if shared:
                for part, shape in (("gate", (shared, dim)), ("up", (shared, dim)), ("down", (dim, shared))):
                    add(b + f"ffn_{part}_shexp.weight", c + f"mlp.shared.w_{part}.weight", shape)
                add(b + "ffn_gate_inp_shexp.weight", c + "mlp.shared_gate.weight", (dim,), quantize=False)
                canon[c + "mlp.shared_gate.weight"] = canon[c + "mlp.shared_gate.weight"][None]  # HF: [1, D]
        else:
            for part, shape in (("gate", (hidden, dim)), ("up", (hidden, dim)), ("down", (dim, hidden))):
                add(b + f"ffn_{part}.weight", c + f"mlp.w_{part}.weight", shape)
    write_gguf(path, arch, meta, tensors)
    return canon


def assert_holds(tensors, canon, qtype):
    assert set(tensors) == {n for n in canon if not n.endswith("#source")}
    for name, held in tensors.items():
        torch.testing.assert_close(held, canon[name], rtol=0, atol=1e-6, msg=name)  # exactly what the file holds
        if qtype in ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1") and held.dim() > 1:
            # ...and that is the source within the quantization step (q/k too: canon holds their rows un-permuted,
            # in the source's order)
            source = canon[name + "#source"].reshape(held.shape)
            step = {"F32": 0, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 0.02}.get(qtype, 0.6)
            assert (held - source).abs().max() <= step * max(1, source.abs().max()), name


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_tiny_llama_round_trip(tmp_path, qtype):
    canon = write_tiny(tmp_path / "t.gguf", qtype=qtype)
    config, tensors, meta = load_gguf(tmp_path / "t.gguf")
    assert (config.arch, config.n_heads, config.n_kv_heads, config.tie_embeddings) == ("llama", 4, 2, False)
    assert_holds(tensors, canon, qtype)
    if qtype == "F32":  # exact, and the Q/K permutation undone against the untouched source
        torch.testing.assert_close(tensors["layers.1.attn.wq.weight"], canon["layers.1.attn.wq.weight#source"],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("qtype", sorted(RNG_TYPES))
def test_k_quants_keep_rows_and_shapes(tmp_path, qtype):
    canon = write_tiny(tmp_path / "k.gguf", qtype=qtype, dim=256, hidden=256, n_heads=4, n_kv=2, n_layers=1)
    config, tensors, _ = load_gguf(tmp_path / "k.gguf")
    assert config.dim == 256
    assert_holds(tensors, canon, qtype)
