"""Gemma 1/2/3: config.json readings, sliding windows smaller than the sequence through the paged engine
(prefix sharing and forks) against transformers' greedy tokens, GGUF files written the way llama.cpp's
converter writes them (norms stored as 1 + w), quantized loading, and the chat format without a system
role. The plain logits parity is tests/engine/test_parity_hf.py (these archs are in tests/tiny_models.ARCHS)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from engine.config import ModelConfig
from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.loaders.gguf_file import load_gguf
from engine.loaders.safetensors_dir import load_hf_dir
from engine.model import Decoder
from engine.quant import build_model
from engine.records import GenerationRequest, LoadOptions, SamplingParams
from engine.text.builtin_templates import GEMMA
from engine.text.chat_template import ChatTemplate

GEMMAS = ("gemma", "gemma2", "gemma3")
PREFILL, DECODE = 32, 16


def hf_logits_match(ours: Decoder, hf_model, seed: int = 0) -> float:
    """Max |logit difference| over a 32-token prefill and 16 decode steps (contiguous cache)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, ours.config.vocab_size, (1, PREFILL + DECODE), generator=g)
    cache = ContiguousKVCache(ours.config, PREFILL + DECODE)
    with torch.no_grad():
        ref = hf_model(tokens[:, :PREFILL], use_cache=True)
        worst = (ref.logits - ours(tokens[:, :PREFILL], cache.view(0, PREFILL))).abs().max().item()
        past = ref.past_key_values
        for i in range(PREFILL, PREFILL + DECODE):
            ref = hf_model(tokens[:, i:i + 1], past_key_values=past, use_cache=True)
            past = ref.past_key_values
            worst = max(worst, (ref.logits - ours(tokens[:, i:i + 1], cache.view(i, 1))).abs().max().item())
    return worst


# -- config.json -----------------------------------------------------------------------------------

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=12, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)


def test_transformers4_gemma3_config_keeps_five_local_to_one_global():
    """Hub configs written by transformers 4: rope_theta + rope_local_base_freq + rope_scaling (global
    layers only), and sliding_window_pattern instead of layer_types."""
    c = ModelConfig.from_hf({**BASE, "model_type": "gemma3_text", "rope_theta": 1e6, "rope_local_base_freq": 1e4,
                             "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
                             "sliding_window_pattern": 6, "query_pre_attn_scalar": 32})
    assert c.arch == "gemma3" and c.qk_norm == "head" and c.post_norms and c.tie_embeddings
    assert c.sliding_windows == (512,) * 5 + (None,) + (512,) * 5 + (None,)
    assert (c.rope_theta, c.local_rope_theta, c.rope_scaling.rope_type, c.rope_scaling.factor) == (1e6, 1e4, "linear", 8)
    assert c.embed_scale == pytest.approx(8.0) and c.norm_weight_offset == 1.0 and c.mlp_activation == "gelu_tanh"
    assert c.head_dim == 32 and c.query_scale == pytest.approx(32 ** -0.5) and c.attn_logit_softcap is None


def test_multimodal_gemma3_config_reads_its_text_model():
    c = ModelConfig.from_hf({"model_type": "gemma3", "text_config": {**BASE, "model_type": "gemma3_text"},
                             "vision_config": {"model_type": "siglip_vision_model"}})
    assert c.arch == "gemma3" and c.n_layers == 12 and c.tie_embeddings


def test_gemma2_config_alternates_windows_and_caps():
    c = ModelConfig.from_hf({**BASE, "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 16})
    assert c.sliding_windows == (16, None, 16, None)
    assert (c.attn_logit_softcap, c.final_logit_softcap) == (50.0, 30.0)  # transformers' defaults
    assert c.query_scale == pytest.approx(256 ** -0.5)


def test_gemma_config_refuses_an_activation_it_does_not_run():
    from engine.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="activation"):
        ModelConfig.from_hf({**BASE, "model_type": "gemma2", "hidden_activation": "relu"})


def test_tied_gemma2_matches_transformers(hf_checkpoint):
    directory, hf_model = hf_checkpoint("gemma2", tie_word_embeddings=True, num_hidden_layers=3)
    config, tensors, _ = load_hf_dir(directory)
    assert config.tie_embeddings and "lm_head.weight" not in tensors
    assert hf_logits_match(Decoder.from_tensors(config, tensors), hf_model) <= 1e-4


# -- the paged engine --------------------------------------------------------------------------------

def hf_greedy(hf_model, prompt: list[int], n: int) -> list[int]:
    hf_model.generation_config.eos_token_id = None
    out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def results(engine: Engine, *requests: GenerationRequest):
    ids = [engine.submit(r) for r in requests]
    done = {}
    while engine.has_work():
        for item in engine.step():
            if hasattr(item, "results"):
                done[item.request_id] = item
    return [done[i] for i in ids]


@pytest.mark.parametrize("arch", GEMMAS)
def test_paged_engine_greedy_equals_transformers_with_prefix_sharing_and_forks(arch, hf_checkpoint):
    """Windows of 8 over prompts of 20+ tokens and blocks of 4: each window spans several blocks, and the
    second request reuses the first one's blocks (prefix cache) while its windows slide past them."""
    directory, hf_model = hf_checkpoint(arch)
    engine = Engine.load(directory, LoadOptions(dtype="float32", kv_block_size=4, quant="none", threads=None))
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 127, (20,), generator=g).tolist()
    longer = prompt + torch.randint(0, 127, (6,), generator=g).tolist()
    greedy = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    first, = results(engine, GenerationRequest(tuple(prompt), greedy))
    assert list(first.results[0].token_ids) == hf_greedy(hf_model, prompt, 16)
    second, = results(engine, GenerationRequest(tuple(longer), greedy, n=2))  # a fork of two greedy samples
    assert second.cached_prompt_tokens == 20  # five full blocks of the first prompt
    expected = hf_greedy(hf_model, longer, 16)
    assert [list(r.token_ids) for r in second.results] == [expected, expected]
    assert engine.kv_blocks_in_use == 0


@pytest.mark.parametrize("arch", ("gemma2", "gemma3"))
def test_sampled_forks_match_a_plain_recompute(arch, hf_checkpoint):
    """Forked samples that diverge (copy-on-write of the shared partial block) keep their own windows."""
    from engine.records import InstrumentOptions, StepRecord

    directory, _ = hf_checkpoint(arch)
    engine = Engine.load(directory, LoadOptions(dtype="float32", kv_block_size=4, quant="none", threads=None))
    prompt = tuple(range(3, 17))  # 14 tokens: the last block is partial
    request = GenerationRequest(prompt, SamplingParams(temperature=1.5, seed=3, max_new_tokens=10), n=2,
                                instrument=InstrumentOptions(stored_logits=-1))
    rid = engine.submit(request)
    steps: dict[int, list[StepRecord]] = {}
    while engine.has_work():
        for item in engine.step():
            if isinstance(item, StepRecord) and item.request_id == rid:
                steps.setdefault(item.seq_index, []).append(item)
    assert len({tuple(r.token_id for r in s) for s in steps.values()}) == 2, "the samples should differ"
    model = engine.model
    for records in steps.values():
        tokens = list(prompt)
        for rec in records:
            cache = ContiguousKVCache(model.config, len(tokens))
            want = model(torch.tensor([tokens]), cache.view(0, len(tokens)))[0, -1]
            got = torch.empty(len(rec.logit_ids))
            got[list(rec.logit_ids)] = torch.tensor(rec.logit_values)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
            tokens.append(rec.token_id)


@pytest.mark.parametrize("arch", GEMMAS)
@pytest.mark.parametrize("mode", ["int8", "int4-g32"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])  # tied: one int8 table, scaled after lookup
def test_quantized_loading_equals_float_on_the_dequantized_weights(arch, mode, tied, hf_checkpoint):
    """int8 / int4 weights (q/k/v and gate/up fused where they apply, GeGLU on the fused halves) compute
    what the float model computes on the same weights dequantized: the Gemma parts around the matmuls
    are unchanged by quantization."""
    from engine.quant import make_weight

    directory, _ = hf_checkpoint(arch, tie_word_embeddings=tied)
    config, tensors, _ = load_hf_dir(directory)
    quant = build_model(config, tensors, "cpu", torch.float32, mode, exact=True)
    if mode == "int8":  # (int4 stacks only row counts its packing allows; these 96-row halves stay apart)
        assert quant.layers[0].mlp.w_gate_up is not None
    rounded = {name: make_weight(t, "int8" if name == "embed.weight" else mode).dequantize().float()
               if t.dim() == 2 else t for name, t in tensors.items()}
    reference = build_model(config, rounded, "cpu", torch.float32, "none", fuse=False)
    tokens = torch.randint(0, 127, (1, 24), generator=torch.Generator().manual_seed(2))
    got = quant(tokens, ContiguousKVCache(config, 24).view(0, 24))
    want = reference(tokens, ContiguousKVCache(config, 24).view(0, 24))
    assert (got - want).abs().max().item() < 1e-3


# -- GGUF -----------------------------------------------------------------------------------------

def write_gemma_gguf(path, hf_model, qtype=gguf.GGMLQuantizationType.F32, vocabulary: bool = False) -> None:
    """The HF checkpoint as llama.cpp's converter lays it out: its names, norm weights stored as 1 + w,
    q/k rows unpermuted (Gemma rotates halves, NEOX-style), the keys its graph reads."""
    c, arch = hf_model.config, {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}[hf_model.config.model_type]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers), w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size), w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads), w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim), w.add_value_length(c.head_dim), w.add_layer_norm_rms_eps(c.rms_norm_eps)
    rope = c.rope_parameters
    if arch == "gemma3":
        w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR), w.add_rope_scaling_factor(rope["full_attention"]["factor"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])
    else:
        w.add_rope_freq_base(rope["rope_theta"])
    if arch != "gemma":
        w.add_sliding_window(c.sliding_window)
        if c.final_logit_softcapping:
            w.add_final_logit_softcapping(c.final_logit_softcapping)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
    if vocabulary:  # a sentencepiece vocabulary with Gemma's turn markers, and no chat template
        control, byte, normal = gguf.TokenType.CONTROL, gguf.TokenType.BYTE, gguf.TokenType.NORMAL
        pieces = [("<pad>", control), ("<eos>", control), ("<bos>", control), ("<unk>", gguf.TokenType.UNKNOWN),
                  ("<start_of_turn>", control), ("<end_of_turn>", control), ("<0x0A>", byte)]
        pieces += [(f"▁w{i}", normal) for i in range(c.vocab_size - len(pieces))]
        w.add_tokenizer_model("llama")
        w.add_token_list([p for p, _ in pieces]), w.add_token_types([t for _, t in pieces])
        w.add_token_scores([0.0] * len(pieces))
        w.add_bos_token_id(2), w.add_eos_token_id(1), w.add_unk_token_id(3)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
             "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "pre_feedforward_layernorm": "ffn_norm",
             "post_feedforward_layernorm": "post_ffw_norm",
             "post_attention_layernorm": "ffn_norm" if arch == "gemma" else "post_attention_norm"}
    for name, tensor in hf_model.state_dict().items():
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            target = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            target = f"blk.{layer}.{names[rest.removesuffix('.weight')]}.weight"
        values = tensor.float().numpy() + (1.0 if target.endswith("norm.weight") else 0.0)
        if values.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(target, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(target, values)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()


@pytest.mark.parametrize("arch", GEMMAS)
def test_gguf_round_trip_matches_transformers(arch, hf_checkpoint, tmp_path):
    # llama.cpp scales queries by 1/sqrt(head_dim) (below 27B), so the file's model must say the same
    extra = {} if arch == "gemma" else {"query_pre_attn_scalar": 16}
    directory, hf_model = hf_checkpoint(arch, **extra)
    path = tmp_path / f"{arch}.gguf"
    write_gemma_gguf(path, hf_model)
    config, tensors, _ = load_gguf(path)
    hf_config, _, _ = load_hf_dir(directory)
    assert config.replace(norm_eps=hf_config.norm_eps) == hf_config  # the file keeps eps as float32
    assert hf_logits_match(Decoder.from_tensors(config, tensors), hf_model) <= 1e-4


def test_gguf_q8_0_weights_load_packed(hf_checkpoint, tmp_path):
    _, hf_model = hf_checkpoint("gemma3", query_pre_attn_scalar=16)
    path = tmp_path / "gemma3-q8.gguf"
    write_gemma_gguf(path, hf_model, gguf.GGMLQuantizationType.Q8_0)
    config, packed, _ = load_gguf(path, keep_packed=True)
    model = build_model(config, packed, "cpu", torch.float32, "auto", exact=True)
    _, floats, _ = load_gguf(path)
    reference = Decoder.from_tensors(config, floats)
    tokens = torch.randint(0, 127, (1, 24), generator=torch.Generator().manual_seed(4))
    got = model(tokens, ContiguousKVCache(config, 24).view(0, 24))
    want = reference(tokens, ContiguousKVCache(config, 24).view(0, 24))
    assert (got - want).abs().max().item() < 1e-3  # the same dequantized values, another matmul order


# -- the chat format ------------------------------------------------------------------------------

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": " Why? "}]


def test_gemma_format_folds_the_system_message_into_the_first_user_turn():
    text = ChatTemplate(GEMMA, bos_token="<bos>").render(CONVERSATION)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n")
    assert "system" not in text


def test_a_gemma_without_a_template_gets_the_gemma_format(hf_checkpoint):
    directory, _ = hf_checkpoint("gemma3")  # the tiny tokenizer ships no chat template
    engine = Engine.load(directory, LoadOptions(dtype="float32", quant="none", threads=None))
    assert engine.chat_template.source == GEMMA
    assert "Gemma format" in engine.template_source() and engine.template_source().endswith(GEMMA)
    rendered = engine.chat_template.render(CONVERSATION)
    assert rendered.startswith(engine.tokenizer.bos_token + "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")


# -- what the panels are told ---------------------------------------------------------------------

def test_facts_and_attention_views_carry_each_layers_window(hf_checkpoint):
    directory, _ = hf_checkpoint("gemma3")
    engine = Engine.load(directory, LoadOptions(dtype="float32", quant="none", threads=None))
    assert engine.facts().sliding_windows == (8, None)
    ids = list(range(3, 23))
    local, full = engine.attention(ids, 0, (10, 20)), engine.attention(ids, 1, (10, 20))
    assert (local.window, full.window) == (8, None)
    for row in range(local.num_queries):
        position = local.query_start + row
        assert local.weights[:, row, :position - 7].sum() == 0  # nothing before the window
        assert local.weights[:, row, position - 7:position + 1].sum() == pytest.approx(4.0, abs=1e-4)  # 4 heads
    assert full.weights[:, -1, :12].sum() > 0  # the global layer still reads the oldest positions


def test_moefication_refuses_a_geglu_model(hf_checkpoint, tmp_path):
    """MoEfied experts are SwiGLUs: splitting Gemma's GeGLU into them would change what the model computes."""
    from engine.moefy.build import moefy

    directory, _ = hf_checkpoint("gemma")
    with pytest.raises(ValueError, match="not a SwiGLU"):
        moefy(directory, tmp_path / "out", n_experts=4, dense_layers=0)


@pytest.mark.parametrize("prefix", ["model.language_model.", "language_model.model."])  # transformers 5 / 4
def test_a_multimodal_gemma3_directory_loads_its_text_model(prefix, hf_checkpoint, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    directory, hf_model = hf_checkpoint("gemma3")
    text = load_file(directory / "model.safetensors")
    head = "lm_head." if prefix.startswith("model.") else "language_model.lm_head."
    renamed = {(head + n.removeprefix("lm_head.")) if n.startswith("lm_head.") else prefix + n.removeprefix("model."):
               t for n, t in text.items()}
    renamed["model.vision_tower.patch_embedding.weight"] = torch.zeros(4, 3)  # not the text model's: skipped
    out = tmp_path / "multimodal"
    out.mkdir()
    save_file(renamed, out / "model.safetensors")
    text_config = json.loads((directory / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_config,
                                                 "vision_config": {"model_type": "siglip_vision_model"},
                                                 "tie_word_embeddings": False}))
    config, tensors, _ = load_hf_dir(out)
    assert hf_logits_match(Decoder.from_tensors(config, tensors), hf_model) <= 1e-4


@pytest.mark.parametrize("T", [1, 5])
def test_grouped_softcapped_attention_equals_the_probes_explicit_path(T):
    """The fast soft-capped path (K/V read in place per group) and the explicit one a probe sees
    (K/V repeated per head) are one computation."""
    from engine.layers.attention import Attention
    from engine.layers.softcap import softcapped_attention
    from engine.kv_cache import causal_mask

    config = ModelConfig.from_hf({**BASE, "model_type": "gemma2", "num_hidden_layers": 2, "sliding_window": 4,
                                  "attn_logit_softcapping": 2.0, "query_pre_attn_scalar": 20})
    attention = Attention(config, 0)
    g = torch.Generator().manual_seed(0)
    S = 9
    q, k, v = (torch.randn(2, n, m, 32, generator=g) * 3 for n, m in ((4, T), (2, S), (2, S)))
    mask = causal_mask(torch.arange(S - T, S).expand(2, -1), torch.arange(S).expand(2, -1), 4).unsqueeze(1)

    class Probe:
        def record_attention(self, layer, probs):
            self.probs = probs

    want = attention._explicit(q, k, v, mask, Probe())
    got = softcapped_attention(q, k, v, mask, 20 ** -0.5, 2.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_gemma_gguf_without_a_template_chats_in_the_gemma_format(hf_checkpoint, tmp_path):
    _, hf_model = hf_checkpoint("gemma3", query_pre_attn_scalar=16)
    path = tmp_path / "gemma3-vocab.gguf"
    write_gemma_gguf(path, hf_model, vocabulary=True)
    engine = Engine.load(path, LoadOptions(dtype="float32", quant="none", threads=None))
    assert engine.chat_template.source == GEMMA
    ids = engine.chat_prompt_ids([{"role": "system", "content": "w1"}, {"role": "user", "content": "w2"}])
    assert ids[:2] == [2, 4] and ids.count(4) == 2 and ids.count(5) == 1  # <bos> <start_of_turn> ... x2, one end
    assert 5 in engine.tokenizer.eos_ids  # a reply stops at <end_of_turn>
