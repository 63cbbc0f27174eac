"""GGUF metadata (plus the file's tensor names and shapes) -> ModelConfig, for the architectures
Glassbox runs. Owns the `{arch}.*` key vocabulary and its validation; reads no tensor data (the
caller passes llama-3 `rope_freqs` values in when the file has them).

Every bad value ends in a ModelFormatError naming the key: GGUF headers are untrusted input, and
a block_count of 2**40 must be refused before anything is sized by it.
"""
from __future__ import annotations

import math

import torch

from engine.config import GEMMA_ARCHITECTURES, ModelConfig, MoeConfig, RopeScaling
from engine.errors import ModelFormatError, UnsupportedArchitecture
from engine.layers.rope import rope_inv_freq
from engine.loaders.gguf_deepseek2 import deepseek2_fields
from engine.loaders.gguf_gpt_oss import gpt_oss_fields
from engine.loaders.gguf_phi3_granite_smollm3 import extra_fields, longrope_scaling

# general.architecture -> ours. "llama" becomes "mixtral" with experts and "mistral" when the file
# says so (llama.cpp writes Mistral models as llama; only general.name or a window tells them apart).
GGUF_ARCHS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe",
              "qwen3moe": "qwen3_moe", "olmoe": "olmoe", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3",
              "phi3": "phi3", "granite": "granite", "smollm3": "smollm3", "deepseek2": "deepseek_v2",
              "gpt-oss": "gpt_oss"}
_QK_NORM = {"qwen3": "head", "qwen3_moe": "head", "olmoe": "full"}
# llama.cpp hard-codes whether each MoE renormalises its top-k weights (norm_w in its graph builders).
_NORM_TOPK = {"mixtral": True, "qwen2_moe": False, "qwen3_moe": True, "olmoe": False,
              "deepseek_v2": False,  # deepseek2: its own key, read in gguf_deepseek2.py
              "gpt_oss": True}  # softmax over the chosen k logits (gguf_gpt_oss.py sets the rest)
_BIG = 1 << 31  # generous ceiling for widths and counts; the real bound on layers is the tensor count
# llama-3 rope settings seen in released models, tried in turn to explain a rope_freqs tensor.
_LLAMA3_CANDIDATES = [(orig, low, high) for orig in (8192, 4096, 16384, 32768, 2048) for low, high in ((1, 4), (1, 2))]


class _Keys:
    """Typed access to `{arch}.*` keys; a missing required key or an out-of-range value is named."""

    def __init__(self, meta: dict, arch: str, path):
        self.meta, self.arch, self.path = meta, arch, path

    def fail(self, key: str, problem: str):
        raise ModelFormatError(self.path, f"metadata {self.arch}.{key} {problem}")

    def raw(self, key: str):
        value = self.meta.get(f"{self.arch}.{key}")
        if isinstance(value, list):  # per-layer arrays: fine while every layer agrees
            if not value or any(v != value[0] for v in value):
                self.fail(key, f"varies per layer ({str(value)[:60]}), which Glassbox does not support")
            value = value[0]
        return value

    def int(self, key: str, default: int | None = None, lo: int = 1, hi: int = _BIG) -> int:
        value = self.raw(key)
        if value is None:
            if default is None:
                self.fail(key, "is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(key, f"= {str(value)[:60]!r} is not an integer in {lo}..{hi}")
        return value

    def float(self, key: str, default: float | None) -> float | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            self.fail(key, f"= {str(value)[:60]!r} is not a positive number")
        return float(value)


def gguf_architecture(meta: dict, path) -> tuple[str, str]:
    """(the file's general.architecture, our architecture name before expert/name refinement)."""
    gguf_arch = meta.get("general.architecture")
    if not isinstance(gguf_arch, str) or gguf_arch not in GGUF_ARCHS:
        raise UnsupportedArchitecture(path, str(gguf_arch)[:60], GGUF_ARCHS)
    return gguf_arch, GGUF_ARCHS[gguf_arch]


def build_config(meta: dict, shapes: dict[str, tuple[int, ...]], path,
                 rope_freqs: torch.Tensor | None = None,
                 rope_factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> ModelConfig:
    """`shapes` are torch-order tensor shapes by GGUF name; `rope_freqs` the llama-3 divisors if any;
    `rope_factors` Phi-3's LongRoPE (long, short) factors if any."""
    gguf_arch, arch = gguf_architecture(meta, path)
    k = _Keys(meta, gguf_arch, path)
    n_experts = k.int("expert_count", 0, lo=0, hi=1 << 16)
    window = k.int("attention.sliding_window", 0, lo=0)
    name = meta.get("general.name")
    if arch == "llama":
        if n_experts:
            arch = "mixtral"
        elif window or isinstance(name, str) and "mistral" in name.lower():
            arch = "mistral"
    n_layers = k.int("block_count", hi=max(len(shapes), 1))  # every layer holds tensors
    dim, n_heads = k.int("embedding_length"), k.int("attention.head_count", hi=1 << 16)
    n_kv_heads = k.int("attention.head_count_kv", n_heads, hi=n_heads)
    head_dim = k.int("attention.key_length", dim // n_heads if dim % n_heads == 0 else None)
    if arch == "deepseek_v2":  # MLA: head_dim is the RoPE part; the key/value widths are read in gguf_deepseek2.py
        head_dim = k.int("rope.dimension_count", hi=head_dim)
    elif k.int("attention.value_length", head_dim) != head_dim:
        k.fail("attention.value_length", "differs from the key length, which Glassbox does not support")
    rotary_dim = k.int("rope.dimension_count", head_dim, hi=head_dim)
    if rotary_dim != head_dim and arch != "phi3":  # partial rotary: read where the layout is known (NeoX)
        k.fail("rope.dimension_count", f"rotates part of each {head_dim}-wide head, which Glassbox does not support")

    embed = shapes.get("token_embd.weight")
    tokens = meta.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else 0
    vocab = embed[0] if embed and len(embed) == 2 else n_tokens or k.int("vocab_size")
    if n_tokens > vocab:
        raise ModelFormatError(path, f"the tokenizer has {n_tokens} tokens but the embedding only {vocab} rows")

    moe_layers = tuple(f"blk.{i}.ffn_gate_inp.weight" in shapes for i in range(n_layers))
    moe = _moe_config(k, arch, n_experts, shapes, moe_layers) if n_experts else None
    q_norm = shapes.get("blk.0.attn_q_norm.weight")
    qk_norm = _QK_NORM.get(arch) or ("none" if q_norm is None else "head" if q_norm == (head_dim,) else "full")
    clip = k.float("attention.clamp_kqv", None)
    keeps_window = arch in ("llama", "mistral", "mixtral", "phi3")  # llama.cpp ignores the key for the others
    try:
        if arch in GEMMA_ARCHITECTURES:
            return _gemma_config(k, arch, dim, n_layers, n_heads, head_dim, window, dict(
                arch=arch, vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                head_dim=head_dim, hidden_dim=k.int("feed_forward_length", 0, lo=0),
                norm_eps=k.float("attention.layer_norm_rms_epsilon", 1e-6), max_seq_len=k.int("context_length", 8192),
                tie_embeddings="output.weight" not in shapes, qk_norm="head" if q_norm is not None else "none"))
        config = ModelConfig(
            arch=arch, vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
            head_dim=head_dim, hidden_dim=k.int("feed_forward_length", 0, lo=0),
            norm_eps=k.float("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=k.float("rope.freq_base", 10000.0),
            rope_scaling=(longrope_scaling(k, rope_factors) if rope_factors
                          else _rope_scaling(k, head_dim, rope_freqs)),
            max_seq_len=k.int("context_length", 2048),
            tie_embeddings="output.weight" not in shapes,
            qkv_bias=arch in ("qwen2", "qwen2_moe") or "blk.0.attn_q.bias" in shapes,
            o_bias="blk.0.attn_output.bias" in shapes,
            qk_norm=qk_norm, clip_qkv=clip,
            sliding_windows=(window if window and keeps_window else None,) * n_layers,
            moe=moe, moe_layers=moe_layers if moe else (),
            rotary_dim=rotary_dim, **extra_fields(k, arch, n_layers),
        )
        if arch == "gpt_oss":  # sinks, biased router and experts, alternating windows: gguf_gpt_oss.py
            return config.replace(**gpt_oss_fields(n_layers, window, moe, config.rope_scaling))
        return config.replace(**deepseek2_fields(k, config, shapes)) if arch == "deepseek_v2" else config
    except (ValueError, TypeError, AssertionError) as e:  # ModelConfig's own consistency checks
        raise ModelFormatError(path, f"inconsistent GGUF metadata: {e}") from None


def _moe_config(k: _Keys, arch: str, n_experts: int, shapes: dict, moe_layers: tuple[bool, ...]) -> MoeConfig:
    first = f"blk.{moe_layers.index(True)}." if any(moe_layers) else "blk.0."
    stacked = shapes.get(first + "ffn_up_exps.weight")  # [E, I, D]
    width = k.int("expert_feed_forward_length", stacked[1] if stacked and len(stacked) == 3 else None)
    shared = shapes.get(first + "ffn_up_shexp.weight")  # [S, D]
    norm = _NORM_TOPK[arch]
    if arch == "qwen2_moe" and k.raw("expert_weights_norm") is not None:
        norm = bool(k.raw("expert_weights_norm"))
    try:
        return MoeConfig(
            n_experts, k.int("expert_used_count", hi=n_experts), width,
            router="topk_softmax" if arch == "mixtral" else "softmax_topk", norm_topk_prob=norm,
            shared_expert_hidden_dim=k.int("expert_shared_feed_forward_length", shared[0] if shared else 0, lo=0),
            shared_expert_gated=first + "ffn_gate_inp_shexp.weight" in shapes,
        )
    except ValueError as e:
        k.fail("expert_used_count", str(e))


def _rope_scaling(k: _Keys, head_dim: int, rope_freqs: torch.Tensor | None) -> RopeScaling:
    kind = k.meta.get(f"{k.arch}.rope.scaling.type")
    if rope_freqs is not None and bool((rope_freqs != 1).any()):
        if kind not in (None, "none"):
            k.fail("rope.scaling.type", f"is {kind!r} but the file also has llama-3 rope_freqs factors")
        return _llama3_from_freqs(k, head_dim, rope_freqs)
    if kind in (None, "none"):
        return RopeScaling()
    if kind not in ("linear", "yarn"):
        k.fail("rope.scaling.type", f"is {str(kind)[:40]!r}; Glassbox reads 'none', 'linear' and 'yarn'")
    return RopeScaling(
        rope_type=kind, factor=k.float("rope.scaling.factor", 1.0),
        original_max_position=k.int("rope.scaling.original_context_length", 0, lo=0) or None,
        beta_fast=k.float("rope.scaling.yarn_beta_fast", 32.0), beta_slow=k.float("rope.scaling.yarn_beta_slow", 1.0),
    )


def _llama3_from_freqs(k: _Keys, head_dim: int, rope_freqs: torch.Tensor) -> RopeScaling:
    """llama.cpp stores Llama 3.1's scaling as per-frequency divisors (`rope_freqs`), not as keys.
    Find the llama3 settings that reproduce them, so the RoPE layer keeps one code path."""
    theta = k.float("rope.freq_base", 10000.0)
    freqs = rope_freqs.double().flatten()
    if freqs.numel() != head_dim // 2 or not bool(torch.isfinite(freqs).all()) or bool((freqs <= 0).any()):
        raise ModelFormatError(k.path, f"rope_freqs has {freqs.numel()} values; a {head_dim}-wide head needs "
                                       f"{head_dim // 2} positive ones")
    plain, _ = rope_inv_freq(head_dim, theta, RopeScaling(), 0)
    target = plain.double() / freqs  # llama.cpp divides each frequency by its factor
    factor = float(freqs.max())
    for original, low, high in _LLAMA3_CANDIDATES:
        scaling = RopeScaling(rope_type="llama3", factor=factor, original_max_position=original,
                              low_freq_factor=low, high_freq_factor=high)
        ours, _ = rope_inv_freq(head_dim, theta, scaling, original)
        if torch.allclose(ours.double(), target, rtol=1e-5, atol=0):
            return scaling
    raise ModelFormatError(k.path, "rope_freqs holds per-frequency factors that match no llama-3 RoPE scaling "
                                   "Glassbox knows; this scaling is not supported")


def _gemma_config(k: _Keys, arch: str, dim: int, n_layers: int, n_heads: int, head_dim: int, window: int,
                  common: dict) -> ModelConfig:
    """Gemma 1/2/3 as llama.cpp writes and runs them: what its graph hard-codes (the sqrt(dim) embedding
    scale, GeGLU, every 2nd / 6th layer global, Gemma 3's local RoPE base of 10000) is restated here.
    Its converter stores norm weights as (1 + w); the loader subtracts the offset back (gguf_file.py)."""
    fields = dict(common, embed_scale=dim ** 0.5, norm_weight_offset=1.0, mlp_activation="gelu_tanh",
                  rope_theta=k.float("rope.freq_base", 10000.0), rope_scaling=_rope_scaling(k, head_dim, None))
    if arch == "gemma":
        return ModelConfig(**fields)
    pattern = k.meta.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if isinstance(pattern, list):  # per layer: True = sliding
        if len(pattern) != n_layers or not all(isinstance(p, bool) for p in pattern):
            k.fail("attention.sliding_window_pattern", f"is not {n_layers} booleans")
        sliding = pattern
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and 1 <= pattern <= n_layers + 1:
        sliding = [i % pattern < pattern - 1 for i in range(n_layers)]
    else:
        k.fail("attention.sliding_window_pattern", f"= {str(pattern)[:40]!r} is neither a period nor per-layer flags")
    window = window or 4096
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (dim / heads): the only
    # sizes whose query_pre_attn_scalar differs from head_dim, told apart by their layer count.
    big = n_layers == (46 if arch == "gemma2" else 62)
    fields.update(
        sliding_windows=tuple(window if s else None for s in sliding), post_norms=True,
        query_scale=(dim // n_heads if big else head_dim) ** -0.5,
        final_logit_softcap=k.float("final_logit_softcapping", 30.0 if arch == "gemma2" else None),
    )
    if arch == "gemma2":
        fields["attn_logit_softcap"] = k.float("attn_logit_softcapping", 50.0)
    else:
        fields["local_rope_theta"] = k.float("rope.freq_base_swa", 10000.0)
    return ModelConfig(**fields)
