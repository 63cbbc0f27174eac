"""Tiny seeded HF transformers models (the test-only reference) for every supported architecture."""
from __future__ import annotations

import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=48)

# Per architecture: (transformers config class name, model class name, config overrides).
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_experts": 4, **MOE, "shared_expert_intermediate_size": 80, "mlp_only_layers": [1]}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 4, **MOE, "norm_topk_prob": True}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2, "clip_qkv": 3.0}),
    # DeepSeek-V2 (a key's "-variant" suffix names a second form of one model_type): latent attention with
    # q through its own low rank; layer 0 dense, layer 1 MoE: 3 of 8 experts, from the best 2 of 4 groups
    # (with 2 experts a token, keeping 2 groups could never exclude anything).
    # Widths all differ (latent 32, q rank 24, nope 16, rope 8, v 12) so that a mixed-up one cannot pass.
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", DEEPSEEK_V2 := {
        "kv_lora_rank": 32, "q_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12,
        "n_routed_experts": 8, "n_shared_experts": 2, "moe_intermediate_size": 40, "num_experts_per_tok": 3,
        "first_k_dense_replace": 1, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
        "routed_scaling_factor": 1.5, "num_key_value_heads": 4}),
    # V2-Lite: q straight from x, plain greedy top-k
    "deepseek_v2-lite": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                         {**DEEPSEEK_V2, "q_lora_rank": None, "topk_method": "greedy", "n_group": None,
                          "topk_group": None, "routed_scaling_factor": 1.0}),
    # Gemma: head_dim unlike dim/heads; windows (8) shorter than the tests' sequences; caps and query
    # scales small enough to change the numbers.
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 32}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 5.0,
                "final_logit_softcapping": 3.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 24, "final_logit_softcapping": 3.0,
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                    "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}}),
    # Phi-3 (Phi-4-mini's shape): LongRoPE trained on 16 positions, so the tests' 48-token streams run past
    # it; half of each head rotated (4 frequencies, each with its own short and long factor).
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             {"partial_rotary_factor": 0.5, "original_max_position_embeddings": 16, "pad_token_id": None,
              "eos_token_id": None,
              "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.3, 2.1, 3.5],
                                  "long_factor": [1.1, 2.5, 6.0, 14.0]}}),
    # Granite: every multiplier away from 1, attention biases on.
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.3,
                 "logits_scaling": 4.0, "attention_bias": True}),
    # SmolLM3: with 2 layers, an interval of 2 makes layer 1 the NoPE layer.
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"no_rope_layer_interval": 2, "pad_token_id": None,
                                                     "bos_token_id": None, "eos_token_id": None}),
    # gpt-oss: layer 0 slides over 8 positions, layer 1 is global; head_dim 20 (not dim/heads, and not a
    # multiple of 8: the sink key's padding is exercised); a SwiGLU limit low enough that the clamps bite;
    # YaRN trained on 64 positions (transformers' default shape, truncate off).
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8, "head_dim": 20,
                 "swiglu_limit": 0.8, "layer_types": ["sliding_attention", "full_attention"],
                 "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                     "truncate": False, "original_max_position_embeddings": 64,
                                     "rope_theta": 150000.0}}),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Replace HF's near-zero init with O(0.1) weights so that differences would show in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.15
            p.copy_(1.0 + noise if "norm" in name else noise)


def build_hf_model(arch: str, seed: int = 0, **overrides):
    import transformers

    cfg_cls, model_cls, arch_overrides = ARCHS[arch]
    config = getattr(transformers, cfg_cls)(**{**TINY, **arch_overrides, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    randomize_(model, seed)
    return model


def write_tiny_tokenizer(directory, vocab_size: int = 128) -> None:
    """A word-level tokenizer.json ("t0".."tN", last id = EOS) so tiny checkpoints load like real ones."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"</s>": vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["</s>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))


def max_logit_diff(model, hf_model, prefill: int = 32, decode: int = 16) -> float:
    """Largest |logit difference| between our Decoder `model` and the transformers model over a random prefill
    and single-token decode steps (a contiguous cache on our side, HF's own cache on its side)."""
    from engine.kv_cache import ContiguousKVCache

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, hf_model.config.vocab_size, (1, prefill + decode), generator=g)
    cache = ContiguousKVCache(model.config, prefill + decode)
    with torch.no_grad():
        ref = hf_model(tokens[:, :prefill], use_cache=True)
        worst = (ref.logits - model(tokens[:, :prefill], cache.view(0, prefill))).abs().max().item()
        for i in range(prefill, prefill + decode):
            ref = hf_model(tokens[:, i:i + 1], past_key_values=ref.past_key_values, use_cache=True)
            worst = max(worst, (ref.logits - model(tokens[:, i:i + 1], cache.view(i, 1))).abs().max().item())
    return worst
