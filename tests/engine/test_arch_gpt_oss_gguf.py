"""gpt-oss as a GGUF (written here with the `gguf` package, as llama.cpp's converter lays it out: MXFP4
experts quantized by gguf's own quantizer, gate and up apart, biases beside them) against transformers
holding gguf's dequantization of the same experts: logits within 1e-4, experts dequantized at load or
kept packed."""
from __future__ import annotations

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.errors import ModelFormatError
from engine.loaders.gguf_file import load_gguf
from engine.quant import build_model
from engine.quant.mxfp4 import Mxfp4SparseMoE
from tests.engine.test_arch_gpt_oss import TOL, compare
from tests.engine.test_gguf_loader import write_gguf


def write_gpt_oss_gguf(path, hf_model) -> None:
    """hf_model's weights as a gpt-oss GGUF; its experts become MXFP4, and hf_model is given gguf's
    dequantization of them, so both sides hold the same numbers."""
    c, p = hf_model.config, "gpt-oss"
    meta = {f"{p}.block_count": c.num_hidden_layers, f"{p}.context_length": c.max_position_embeddings,
            f"{p}.embedding_length": c.hidden_size, f"{p}.feed_forward_length": c.intermediate_size,
            f"{p}.attention.head_count": c.num_attention_heads, f"{p}.attention.head_count_kv": c.num_key_value_heads,
            f"{p}.attention.key_length": c.head_dim, f"{p}.attention.value_length": c.head_dim,
            f"{p}.attention.layer_norm_rms_epsilon": c.rms_norm_eps, f"{p}.rope.freq_base": c.rope_parameters["rope_theta"],
            f"{p}.expert_count": c.num_local_experts, f"{p}.expert_used_count": c.num_experts_per_tok,
            f"{p}.expert_feed_forward_length": c.intermediate_size, f"{p}.attention.sliding_window": c.sliding_window,
            f"{p}.rope.scaling.type": "yarn", f"{p}.rope.scaling.factor": c.rope_parameters["factor"],
            f"{p}.rope.scaling.original_context_length": c.rope_parameters["original_max_position_embeddings"],
            "tokenizer.ggml.tokens": [f"t{i}" for i in range(c.vocab_size)]}
    f32 = lambda t: t.detach().float().numpy().copy()  # noqa: E731
    m = hf_model.model
    tensors = {"token_embd.weight": (f32(m.embed_tokens.weight), None), "output_norm.weight": (f32(m.norm.weight), None),
               "output.weight": (f32(hf_model.lm_head.weight), None)}
    for i, layer in enumerate(m.layers):
        b, attn, mlp = f"blk.{i}.", layer.self_attn, layer.mlp
        tensors |= {b + "attn_norm.weight": (f32(layer.input_layernorm.weight), None),
                    b + "post_attention_norm.weight": (f32(layer.post_attention_layernorm.weight), None),
                    b + "attn_sinks.weight": (f32(attn.sinks), None),
                    b + "ffn_gate_inp.weight": (f32(mlp.router.weight), None),
                    b + "ffn_gate_inp.bias": (f32(mlp.router.bias), None)}
        for ours, theirs in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj), ("output", attn.o_proj)):
            tensors |= {b + f"attn_{ours}.weight": (f32(theirs.weight), None), b + f"attn_{ours}.bias": (f32(theirs.bias), None)}
        experts = mlp.experts
        gate_up = experts.gate_up_proj.detach().transpose(1, 2)  # [E, 2I, D], gate and up interleaved
        bias = experts.gate_up_proj_bias.detach()
        weights = {"gate": gate_up[:, 0::2], "up": gate_up[:, 1::2], "down": experts.down_proj.detach().transpose(1, 2)}
        held = {}
        for part, w in weights.items():
            packed = gguf.quants.quantize(f32(w), Q.MXFP4)
            tensors[b + f"ffn_{part}_exps.weight"] = (packed, "MXFP4")
            held[part] = torch.from_numpy(gguf.quants.dequantize(packed, Q.MXFP4).reshape(w.shape).copy())
        tensors |= {b + "ffn_gate_exps.bias": (f32(bias[:, 0::2]), None), b + "ffn_up_exps.bias": (f32(bias[:, 1::2]), None),
                    b + "ffn_down_exps.bias": (f32(experts.down_proj_bias), None)}
        with torch.no_grad():  # transformers gets exactly what the file holds
            interleaved = torch.stack((held["gate"], held["up"]), dim=2).flatten(1, 2)  # [E, 2I, D]
            experts.gate_up_proj.copy_(interleaved.transpose(1, 2))
            experts.down_proj.copy_(held["down"].transpose(1, 2))
    write_gguf(path, p, meta, tensors)


@pytest.fixture
def gpt_oss_gguf(hf_checkpoint, tmp_path):
    # llama.cpp's graph hard-codes the SwiGLU limit 7 (the file has no key for it): the reference uses it too
    _, hf_model = hf_checkpoint("gpt_oss", swiglu_limit=7.0)
    with torch.no_grad():
        for layer in hf_model.model.layers:
            layer.self_attn.sinks.add_(1.5)  # a share the sinks cannot hide in
    path = tmp_path / "tiny-gpt-oss.gguf"
    write_gpt_oss_gguf(path, hf_model)
    return path, hf_model


def test_gguf_config_reads_gpt_oss(gpt_oss_gguf):
    path, _ = gpt_oss_gguf
    config, tensors, _ = load_gguf(path)
    assert config.arch == "gpt_oss" and config.attn_sinks and config.sliding_windows == (8, None)
    assert (config.moe.router, config.moe.router_bias, config.moe.expert_bias, config.moe.swiglu_limit) == \
        ("topk_softmax", True, True, 7.0)
    assert (config.rope_scaling.rope_type, config.rope_scaling.factor, config.rope_scaling.truncate) == ("yarn", 4.0, False)
    assert tensors["layers.1.mlp_norm.weight"].shape == (64,) and tensors["layers.0.attn.sinks"].shape == (4,)


@pytest.mark.parametrize("keep_packed", [False, True], ids=["dequantized", "packed"])
def test_gguf_logits_match_transformers(gpt_oss_gguf, keep_packed):
    path, hf_model = gpt_oss_gguf
    config, tensors, _ = load_gguf(path, keep_packed=keep_packed)
    model = build_model(config, tensors, "cpu", torch.float32, "auto")
    assert all(isinstance(b.mlp, Mxfp4SparseMoE) for b in model.layers) == keep_packed
    assert compare(model, hf_model) <= TOL


def test_gguf_nan_mxfp4_scale_is_a_model_format_error(gpt_oss_gguf):
    path, _ = gpt_oss_gguf
    data = bytearray(path.read_bytes())
    from engine.loaders.gguf_file import _open

    _, infos, _ = _open(path)
    t = infos["blk.0.ffn_down_exps.weight"]
    data[t.offset] = 255  # the first block's E8M0 scale: NaN
    broken = path.with_name("broken.gguf")
    broken.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="NaN"):
        load_gguf(broken, keep_packed=True)
    with pytest.raises(ModelFormatError, match="NaN or infinite"):
        load_gguf(broken)


def test_any_moe_gguf_with_mxfp4_experts_loads_packed_or_dequantized(tmp_path):
    """llama.cpp can store any MoE's experts as MXFP4 (its MXFP4_MOE type): a Qwen3-MoE so written holds
    the values gguf dequantizes to, and the packed experts compute what the dequantized ones do."""
    from engine.kv_cache import ContiguousKVCache
    from tests.engine.test_gguf_loader import assert_holds, write_tiny

    path = tmp_path / "tiny-qwen3moe-mxfp4.gguf"
    canon = write_tiny(path, arch="qwen3moe", qtype="MXFP4", experts=4)
    config, floats, _ = load_gguf(path)
    assert_holds(floats, canon, "MXFP4")
    _, packed, _ = load_gguf(path, keep_packed=True)
    assert type(packed["layers.0.mlp.w_gate"]).__name__ == "PackedMxfp4"
    assert type(packed["layers.0.attn.wq.weight"]) is torch.Tensor  # 2-D MXFP4 weights are read as floats
    a, b = (build_model(config, t, "cpu", torch.float32, "auto") for t in (floats, packed))
    assert isinstance(b.layers[0].mlp, Mxfp4SparseMoE)
    tokens = torch.randint(0, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    out = [m(tokens, ContiguousKVCache(config, 12).view(0, 12)) for m in (a, b)]
    torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=0)
