"""GGUF: the default model's tensors equal transformers' reading of the same file, tiny GGUFs we
write round-trip, and every damaged file ends in a ModelFormatError naming file and problem."""
import gguf
import numpy as np
import pytest
import torch

from engine.errors import ModelFormatError, UnsupportedArchitecture
from engine.loaders.gguf_file import load_gguf, read_metadata, unpermute_qk
from engine.loaders.safetensors_dir import hf_state_to_canonical


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter layout (the inverse of what the loader undoes), written independently."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch="llama", n_layers=2, dim=32, n_heads=4, n_kv=2, hidden=64, vocab=64,
                    experts=0, qtype=gguf.GGMLQuantizationType.F32, seed=0, skip=(), meta_overrides=None):
    """A small random model as llama.cpp would write it. Returns the canonical tensors it holds."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(128)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
    for key, value in (meta_overrides or {}).items():
        w.add_uint32(key, value)
    canon = {}
    d = dim // n_heads

    def add(gguf_name, canon_name, array, quantize=True, permute_heads=0):
        if gguf_name in skip:
            return
        array = array.astype(np.float32)
        stored = permute_qk(array, permute_heads) if permute_heads else array
        if quantize and qtype != gguf.GGMLQuantizationType.F32 and array.ndim == 2:
            packed = gguf.quants.quantize(stored, qtype)
            w.add_tensor(gguf_name, packed, raw_dtype=qtype)
            # What the file really holds is the rounded values, still in llama.cpp's row order.
            rounded = torch.from_numpy(gguf.quants.dequantize(packed, qtype))
            canon[canon_name] = unpermute_qk(rounded, permute_heads) if permute_heads else rounded
        else:
            w.add_tensor(gguf_name, stored)
            canon[canon_name] = torch.from_numpy(array)

    add("token_embd.weight", "embed.weight", rng.standard_normal((vocab, dim)))
    add("output_norm.weight", "norm.weight", 1 + 0.1 * rng.standard_normal(dim), quantize=False)
    add("output.weight", "lm_head.weight", rng.standard_normal((vocab, dim)))
    for i in range(n_layers):
        p, c = f"blk.{i}.", f"layers.{i}."
        add(p + "attn_norm.weight", c + "attn_norm.weight", 1 + 0.1 * rng.standard_normal(dim), quantize=False)
        add(p + "ffn_norm.weight", c + "mlp_norm.weight", 1 + 0.1 * rng.standard_normal(dim), quantize=False)
        heads = {"q": n_heads, "k": n_kv, "v": 0}
        for name, rows in (("q", n_heads * d), ("k", n_kv * d), ("v", n_kv * d)):
            add(p + f"attn_{name}.weight", c + f"attn.w{name}.weight", rng.standard_normal((rows, dim)),
                permute_heads=heads[name] if arch == "llama" else 0)
            if arch == "qwen2":
                add(p + f"attn_{name}.bias", c + f"attn.w{name}.bias", rng.standard_normal(rows), quantize=False)
        add(p + "attn_output.weight", c + "attn.wo.weight", rng.standard_normal((dim, n_heads * d)))
        if experts:
            add(p + "ffn_gate_inp.weight", c + "mlp.router.weight", rng.standard_normal((experts, dim)),
                quantize=False)
            for name, shape in (("gate", (experts, hidden, dim)), ("up", (experts, hidden, dim)),
                                ("down", (experts, dim, hidden))):
                add(p + f"ffn_{name}_exps.weight", c + f"mlp.w_{name}", rng.standard_normal(shape), quantize=False)
        else:
            add(p + "ffn_gate.weight", c + "mlp.w_gate.weight", rng.standard_normal((hidden, dim)))
            add(p + "ffn_up.weight", c + "mlp.w_up.weight", rng.standard_normal((hidden, dim)))
            add(p + "ffn_down.weight", c + "mlp.w_down.weight", rng.standard_normal((dim, hidden)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return canon


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_llama_round_trip(tmp_path, qtype):
    path = tmp_path / "tiny.gguf"
    source = write_tiny_gguf(path, qtype=getattr(gguf.GGMLQuantizationType, qtype))
    config, tensors, meta = load_gguf(path)
    assert config.arch == "llama" and config.n_kv_heads == 2 and not config.tie_embeddings
    assert set(tensors) == set(source)
    tol = 0 if qtype == "F32" else 2e-3 if qtype == "F16" else 1e-5
    for name in source:
        torch.testing.assert_close(tensors[name], source[name], rtol=0, atol=tol, msg=name)


def test_qwen2_biases_and_mixtral_experts(tmp_path):
    src = write_tiny_gguf(tmp_path / "q.gguf", arch="qwen2")
    config, tensors, _ = load_gguf(tmp_path / "q.gguf")
    assert config.arch == "qwen2" and config.qkv_bias
    torch.testing.assert_close(tensors["layers.1.attn.wk.bias"], src["layers.1.attn.wk.bias"])
    torch.testing.assert_close(tensors["layers.0.attn.wq.weight"], src["layers.0.attn.wq.weight"])  # not permuted
    src = write_tiny_gguf(tmp_path / "m.gguf", experts=4)
    config, tensors, _ = load_gguf(tmp_path / "m.gguf")
    assert config.arch == "mixtral" and config.moe.n_experts == 4 and config.moe.router == "topk_softmax"
    torch.testing.assert_close(tensors["layers.1.mlp.w_down"], src["layers.1.mlp.w_down"])


def test_progress_reaches_total(tmp_path):
    write_tiny_gguf(tmp_path / "t.gguf")
    calls = []
    load_gguf(tmp_path / "t.gguf", progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][0] == calls[-1][1] and calls[-1][2] == calls[-1][3]


@pytest.mark.slow
def test_default_model_equals_transformers_reading(default_gguf, hf_default_model):
    from transformers import AutoConfig

    config, tensors, meta = load_gguf(default_gguf)
    hf_config = AutoConfig.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.hidden_dim, config.vocab_size) == (
        hf_config.hidden_size, hf_config.num_hidden_layers, hf_config.num_attention_heads,
        hf_config.num_key_value_heads, hf_config.intermediate_size, hf_config.vocab_size)
    assert config.tie_embeddings == hf_config.tie_word_embeddings
    assert config.norm_eps == pytest.approx(hf_config.rms_norm_eps)
    ref = hf_state_to_canonical(hf_default_model.state_dict(), config)
    assert set(ref) == set(tensors)
    for name in tensors:  # the Q/K un-permutation is right only if these are equal
        torch.testing.assert_close(tensors[name], ref[name], rtol=0, atol=1e-6, msg=name)
    assert meta["tokenizer.ggml.model"] == "gpt2" and len(meta["tokenizer.ggml.tokens"]) == config.vocab_size


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "bad magic":
        data[:4] = b"GGUX"
    elif how == "bad version":
        data[4:8] = (99).to_bytes(4, "little")
    elif how == "absurd tensor count":
        data[8:16] = (2**62).to_bytes(8, "little")
    elif how == "absurd metadata count":
        data[16:24] = (2**40).to_bytes(8, "little")
    elif how.startswith("cut at "):
        data = data[: int(how.split()[-1])]
    elif how == "cut in data":
        data = data[: len(data) - 100]
    elif how == "absurd string length":
        data[24:32] = (2**50).to_bytes(8, "little")  # the first metadata key's length
    path.write_bytes(bytes(data))


DAMAGE = {
    "bad magic": "not a GGUF file",
    "bad version": "unsupported GGUF version 99",
    "absurd tensor count": "cannot fit",
    "absurd metadata count": "cannot fit",
    "absurd string length": "claims",
    "cut at 2": "truncated",
    "cut at 20": "truncated",
    "cut at 300": "truncated",
    "cut in data": "truncated",
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_files_raise_model_format_error(tmp_path, how):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    _damage(path, how)
    with pytest.raises(ModelFormatError) as info:
        load_gguf(path)
    assert str(path) in str(info.value) and DAMAGE[how] in str(info.value)


def test_inconsistent_models(tmp_path):
    missing = tmp_path / "missing.gguf"
    write_tiny_gguf(missing, skip=("blk.1.attn_v.weight",))
    with pytest.raises(ModelFormatError, match="missing tensors: layers.1.attn.wv.weight"):
        load_gguf(missing)
    wrong = tmp_path / "wrong.gguf"
    write_tiny_gguf(wrong, meta_overrides={"llama.feed_forward_length": 40})  # tensors say 64
    with pytest.raises(ModelFormatError, match="has shape"):
        load_gguf(wrong)
    unknown = tmp_path / "unknown.gguf"
    w = gguf.GGUFWriter(str(unknown), "rwkv6")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedArchitecture, match="'rwkv6'"):
        load_gguf(unknown)


def test_unsupported_quant_type_is_named(tmp_path):
    path = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    packed = np.zeros((4, 66), np.uint8)  # bytes of an IQ2_XXS-typed tensor; its content does not matter
    w.add_tensor("token_embd.weight", packed, raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    w.add_block_count(1), w.add_embedding_length(256), w.add_head_count(2), w.add_context_length(8)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ModelFormatError, match="IQ2_XXS"):
        load_gguf(path)


def test_metadata_is_plain_python(tmp_path):
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path)
    meta = read_metadata(path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert isinstance(meta["llama.rope.freq_base"], float)
