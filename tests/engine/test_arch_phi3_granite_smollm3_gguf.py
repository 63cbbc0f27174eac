"""GGUF files of Phi-3, Granite and SmolLM3 written from tiny transformers models the way llama.cpp's converter
writes them (Phi-3: fused attn_qkv / ffn_up, LongRoPE factors as tensors; Granite and SmolLM3: llama names with
Q/K rows permuted, Granite's scales as keys) load into logits equal to transformers'; a Q8_0 Phi-3 stays packed
through the split of its fused tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.loaders.gguf_file import load_gguf
from engine.model import Decoder
from tests.engine.test_arch_phi3_granite_smollm3 import ARCHS, recompute
from tests.engine.test_gguf_loader import permute_qk, write_gguf
from tests.tiny_models import build_hf_model, max_logit_diff


def _gguf_from_hf(path, arch: str, hf_model, qtype: str = "F32"):
    """The tiny HF model's weights under llama.cpp's names and keys: Phi-3 fused and unpermuted, with its
    LongRoPE factors as tensors; Granite and SmolLM3 as llama (Q/K rows permuted)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    c = hf_model.config
    H, K = c.num_attention_heads, c.num_key_value_heads
    state = {n: t.detach().numpy().astype(np.float32) for n, t in hf_model.state_dict().items()}
    kv = {f"{arch}.block_count": c.num_hidden_layers, f"{arch}.context_length": c.max_position_embeddings,
          f"{arch}.embedding_length": c.hidden_size, f"{arch}.feed_forward_length": c.intermediate_size,
          f"{arch}.attention.head_count": H, f"{arch}.attention.head_count_kv": K,
          f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
          f"{arch}.rope.freq_base": float(c.rope_parameters["rope_theta"]),
          "tokenizer.ggml.tokens": [f"t{i}" for i in range(c.vocab_size)]}
    tensors = {}

    def add(name, array):
        if qtype != "F32" and array.ndim == 2 and "norm" not in name:
            array = quants.quantize(array, Q[qtype])
        tensors[name] = (array, qtype if array.dtype == np.uint8 else None)

    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    add("output.weight", state["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        hf, b = f"model.layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", state[hf + "input_layernorm.weight"])
        add(b + "ffn_norm.weight", state[hf + "post_attention_layernorm.weight"])
        add(b + "attn_output.weight", state[hf + "self_attn.o_proj.weight"])
        add(b + "ffn_down.weight", state[hf + "mlp.down_proj.weight"])
        if arch == "phi3":
            add(b + "attn_qkv.weight", state[hf + "self_attn.qkv_proj.weight"])
            add(b + "ffn_up.weight", state[hf + "mlp.gate_up_proj.weight"])
            continue
        for part, heads in (("q", H), ("k", K), ("v", 0)):
            for suffix in ("weight", "bias"):
                value = state.get(hf + f"self_attn.{part}_proj.{suffix}")
                if value is not None:
                    add(b + f"attn_{part}.{suffix}", permute_qk(value, heads) if heads else value)
        if (bias := state.get(hf + "self_attn.o_proj.bias")) is not None:
            add(b + "attn_output.bias", bias)
        add(b + "ffn_gate.weight", state[hf + "mlp.gate_proj.weight"])
        add(b + "ffn_up.weight", state[hf + "mlp.up_proj.weight"])
    if arch == "phi3":
        rope = c.rope_parameters
        kv |= {"phi3.rope.dimension_count": int(c.hidden_size // H * rope["partial_rotary_factor"]),
               "phi3.rope.scaling.original_context_length": rope["original_max_position_embeddings"],
               "phi3.rope.scaling.attn_factor": math.sqrt(2), "phi3.attention.sliding_window": 0}
        add("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        add("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    if arch == "granite":
        kv |= {"granite.embedding_scale": c.embedding_multiplier, "granite.residual_scale": c.residual_multiplier,
               "granite.attention.scale": c.attention_multiplier, "granite.logit_scale": c.logits_scaling}
    write_gguf(path, arch, kv, tensors)


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_round_trip_equals_transformers(arch, tmp_path):
    # SmolLM3's GGUF cannot say which layers skip RoPE (llama.cpp hard-codes every 4th): four layers here.
    four_layers = {"num_hidden_layers": 4, "no_rope_layer_interval": 4}
    hf_model = build_hf_model(arch, **(four_layers if arch == "smollm3" else {}))
    path = tmp_path / f"{arch}.gguf"
    _gguf_from_hf(path, arch, hf_model)
    config, tensors, _ = load_gguf(path)
    assert config.arch == arch
    if arch == "smollm3":
        assert config.rope_layers == (True, True, True, False)
    if arch == "phi3":
        assert config.rope_scaling.rope_type == "longrope" and config.rotary_dim == 8
    assert max_logit_diff(Decoder.from_tensors(config, tensors), hf_model) <= 1e-4


def test_phi3_gguf_q8_0_stays_packed_through_the_split(tmp_path):
    """A quantized Phi-3 file: the fused attn_qkv / ffn_up blocks are split as bytes and installed as int8
    weights; they compute what the same file dequantized computes."""
    from engine.quant import QuantLinear, build_model

    hf_model = build_hf_model("phi3")
    path = tmp_path / "phi3-q8.gguf"
    _gguf_from_hf(path, "phi3", hf_model, qtype="Q8_0")
    config, packed, _ = load_gguf(path, keep_packed=True)
    _, floats, _ = load_gguf(path)
    quantized = build_model(config, packed, "cpu", torch.float32, "auto", exact=True)
    reference = build_model(config, floats, "cpu", torch.float32, "none")
    assert isinstance(quantized.layers[0].attn.wqkv, QuantLinear)
    prompt = list(range(3, 40))
    torch.testing.assert_close(recompute(quantized, prompt), recompute(reference, prompt), atol=1e-4, rtol=0)

