"""Model shape as frozen dataclasses, built from a Hugging Face config.json (GGUF metadata is
translated in loaders/gguf_file.py). Owns validation of shapes; knows nothing about weights."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.config_fields import hf_extra_fields, hf_rope_params
from engine.errors import ModelFormatError, UnsupportedArchitecture

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                           "gemma", "gemma2", "gemma3", "deepseek_v2", "phi3", "granite", "smollm3",
                           "gpt_oss")
# config.json model_type -> our architecture name (Gemma 3's text-only checkpoints say "gemma3_text")
MODEL_TYPE_ALIASES = {"gemma3_text": "gemma3"}
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """How rotary position frequencies are stretched past the trained context.

    Field names follow HF's `rope_scaling` / `rope_parameters` so the mapping stays obvious.
    """

    rope_type: str = "default"
    factor: float = 1.0
    # Context the model was trained on; None means "the config's max_position_embeddings".
    original_max_position: int | None = None
    # YaRN
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # LongRoPE (Phi-3): one divisor per frequency, `short_factor` while a sequence fits in the original
    # context and `long_factor` once it is longer; attention_factor None = sqrt(1 + ln factor / ln original)
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unknown RoPE scaling {self.rope_type!r}; known: {', '.join(ROPE_TYPES)}")
        if self.factor <= 0:
            raise ValueError(f"RoPE scaling factor must be positive, got {self.factor}")
        if self.rope_type == "longrope":
            if not self.short_factor or len(self.short_factor) != len(self.long_factor):
                raise ValueError("LongRoPE needs short_factor and long_factor lists of equal length "
                                 "(they come with the checkpoint's config)")
            if not all(f > 0 for f in self.short_factor + self.long_factor):
                raise ValueError("LongRoPE factors must be positive")

    @classmethod
    def from_hf(cls, params: dict | None) -> "RopeScaling":
        """Read HF's `rope_scaling` (v4) or `rope_parameters` (v5) dict; None or 'default' -> no scaling."""
        if not params:
            return cls()
        kind = params.get("rope_type", params.get("type", "default")) or "default"
        kind = "longrope" if kind == "su" else kind  # transformers 4's name for it
        opt = lambda key, default=None: params.get(key) if params.get(key) is not None else default  # noqa: E731
        return cls(
            rope_type=kind,
            factor=float(opt("factor", 1.0)),
            original_max_position=opt("original_max_position_embeddings"),
            beta_fast=float(opt("beta_fast", 32.0)),
            beta_slow=float(opt("beta_slow", 1.0)),
            mscale=opt("mscale"),
            mscale_all_dim=opt("mscale_all_dim"),
            attention_factor=opt("attention_factor"),
            truncate=bool(opt("truncate", True)),
            low_freq_factor=float(opt("low_freq_factor", 1.0)),
            high_freq_factor=float(opt("high_freq_factor", 4.0)),
            short_factor=tuple(float(f) for f in opt("short_factor", ())),
            long_factor=tuple(float(f) for f in opt("long_factor", ())),
        )

    @classmethod
    def parse(cls, spec: str, original_max_position: int | None = None) -> "RopeScaling":
        """Parse a command-line override such as 'yarn:4' or 'linear:2' or 'none'."""
        kind, _, factor = spec.partition(":")
        kind = {"none": "default", "ntk": "dynamic"}.get(kind, kind)
        return cls(rope_type=kind, factor=float(factor or 1.0), original_max_position=original_max_position)


@dataclass(frozen=True, slots=True)
class MoeConfig:
    n_experts: int
    n_experts_per_tok: int
    expert_hidden_dim: int
    # "topk_softmax": softmax over the k chosen logits (Mixtral).
    # "softmax_topk": softmax over all experts, then take k (Qwen-MoE, OLMoE); renormalised if norm_topk_prob.
    router: str = "softmax_topk"
    norm_topk_prob: bool = False
    shared_expert_hidden_dim: int = 0  # Qwen2-MoE's always-on expert; 0 = none
    shared_expert_gated: bool = True  # Qwen2-MoE scales the shared expert by sigmoid(gate(x))
    # MoEfied checkpoints (engine/moefy/checkpoint.py) store their router multiplied by this tiny
    # factor so that every selected expert's weight is E·softmax = 1; the probabilities shown and
    # counted in router statistics are softmax(logits / router_scale). Routing itself ignores it.
    router_scale: float = 1.0
    # DeepSeek's group-limited routing: experts form n_group equal groups, each token keeps the topk_group
    # groups whose best expert scores highest and picks its k experts among those (1, 1 = plain top-k).
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0  # the chosen experts' weights are multiplied by this (DeepSeek)
    # gpt-oss: a router with a bias, experts with biases, and a clamped SwiGLU: gate clamped to <= limit,
    # up to [-limit, limit], out = gate * sigmoid(alpha * gate) * (up + 1). None = plain silu(gate) * up.
    router_bias: bool = False
    expert_bias: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float = 1.0

    def __post_init__(self):
        assert self.router in ("topk_softmax", "softmax_topk"), self.router
        if not 0 < self.n_experts_per_tok <= self.n_experts:
            raise ValueError(f"experts per token ({self.n_experts_per_tok}) must be in 1..{self.n_experts}")
        if self.n_group > 1 and (self.n_experts % self.n_group or not 0 < self.topk_group <= self.n_group
                                 or self.topk_group * (self.n_experts // self.n_group) < self.n_experts_per_tok):
            raise ValueError(f"{self.n_experts} experts in {self.n_group} groups, {self.topk_group} groups kept, "
                             f"cannot give each token {self.n_experts_per_tok} experts")


@dataclass(frozen=True, slots=True)
class MlaConfig:
    """DeepSeek-V2's multi-head latent attention (engine/layers/mla.py): keys and values are expanded per
    head from one compressed latent per token, which (with the RoPE key shared by every head) is all the
    KV cache keeps."""

    kv_lora_rank: int  # width of the latent c_kv
    qk_nope_head_dim: int  # per head: the part of q and k without position
    qk_rope_head_dim: int  # the rotated part: one k_pe per token shared by every head (= ModelConfig.head_dim)
    v_head_dim: int
    q_lora_rank: int | None = None  # None: q = q_proj(x) (V2-Lite); else q = q_b(norm(q_a(x)))
    a_bias: bool = False  # q_a_proj and kv_a_proj_with_mqa carry biases (attention_bias)

    def __post_init__(self):
        if min(self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim) <= 0 or \
                self.qk_rope_head_dim % 2 or (self.q_lora_rank is not None and self.q_lora_rank <= 0):
            raise ValueError("MLA ranks and head widths must be positive (the RoPE part even)")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int  # width of the dense SwiGLU MLP (0 when every layer is MoE)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    o_bias: bool = False
    qk_norm: str = "none"  # "none" | "head": RMSNorm per head (Qwen3) | "full": over all heads (OLMoE)
    clip_qkv: float | None = None  # OLMoE clamps q, k, v to [-clip, clip]
    # Per layer: None = full causal attention, W = attend to the last W positions only (Mistral).
    sliding_windows: tuple[int | None, ...] = ()
    moe: MoeConfig | None = None
    moe_layers: tuple[bool, ...] = ()  # per layer: sparse MoE block instead of the dense MLP
    mla: MlaConfig | None = None  # multi-head latent attention (DeepSeek-V2) instead of GQA
    # gpt-oss: one learned logit per query head joins every softmax row (it takes probability mass, has no value)
    attn_sinks: bool = False
    # Gemma-family mechanisms (defaults = off; each is general, any architecture may set it)
    embed_scale: float = 1.0  # embeddings multiplied by this, rounded to the model's dtype (Gemma: sqrt(dim))
    norm_weight_offset: float = 0.0  # RMSNorm scales by (offset + weight), in fp32 before the cast (Gemma: 1)
    mlp_activation: str = "silu"  # the gated MLP's activation: "silu" (SwiGLU) | "gelu_tanh" (GeGLU, Gemma)
    attn_logit_softcap: float | None = None  # scores -> cap * tanh(scores / cap) before the softmax (Gemma 2)
    final_logit_softcap: float | None = None  # the same on the output logits (Gemma 2)
    post_norms: bool = False  # an RMSNorm on the attention and MLP outputs before each residual add (Gemma 2/3)
    query_scale: float | None = None  # attention scores' scale; None = head_dim ** -0.5
    # RoPE base of the sliding-window layers, which then rotate without rope_scaling (Gemma 3's local
    # layers); None = every layer uses rope_theta and rope_scaling
    local_rope_theta: float | None = None
    # Granite / SmolLM3 / Phi-3 mechanisms (defaults = off; general, like the ones above)
    residual_multiplier: float = 1.0  # attention and MLP outputs scaled before each residual add (Granite)
    logit_divisor: float = 1.0  # output logits divided by this (Granite's logits_scaling)
    rope_layers: tuple[bool, ...] = ()  # per layer: rotate q/k; False = a NoPE layer (SmolLM3); () = all rotate
    rotary_dim: int = 0  # leading dims of each head that RoPE rotates (partial rotary, Phi-4-mini); 0 = all

    def __post_init__(self):
        if self.arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.arch!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        assert self.qk_norm in ("none", "head", "full"), self.qk_norm
        if self.mlp_activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"unknown MLP activation {self.mlp_activation!r}")
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * self.n_layers)
        if not self.moe_layers:
            object.__setattr__(self, "moe_layers", (self.moe is not None,) * self.n_layers)
        assert len(self.sliding_windows) == self.n_layers and len(self.moe_layers) == self.n_layers
        if any(self.moe_layers) and self.moe is None:
            raise ValueError("moe_layers set but no MoeConfig")
        if not self.rope_layers:
            object.__setattr__(self, "rope_layers", (True,) * self.n_layers)
        if not self.rotary_dim:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        if len(self.rope_layers) != self.n_layers:
            raise ValueError(f"rope_layers has {len(self.rope_layers)} entries for {self.n_layers} layers")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim {self.rotary_dim} must be even and within the head ({self.head_dim})")
        if self.rope_scaling.rope_type == "longrope" and len(self.rope_scaling.short_factor) != self.rotary_dim // 2:
            raise ValueError(f"LongRoPE has {len(self.rope_scaling.short_factor)} factors; {self.rotary_dim} "
                             f"rotated dims need {self.rotary_dim // 2}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def kv_entry(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """What the KV cache keeps per token and layer, as (heads, width) of its two tensors: K and V
        ((K, d) each), or for MLA the latent c_kv and the shared RoPE key k_pe ((1, rank), (1, rope))."""
        if self.mla is not None:
            return (1, self.mla.kv_lora_rank), (1, self.mla.qk_rope_head_dim)
        return (self.n_kv_heads, self.head_dim), (self.n_kv_heads, self.head_dim)

    def first_layers(self, n: int) -> "ModelConfig":
        """The same model cut after its first n layers (a replay up to a layer, a layer-skip draft). Every
        per-layer tuple is cut with it, including ones added later, so no caller has to know them all."""
        cut = {f.name: getattr(self, f.name)[:n] for f in dataclasses.fields(self)
               if isinstance(getattr(self, f.name), tuple) and len(getattr(self, f.name)) == self.n_layers}
        return dataclasses.replace(self, n_layers=n, **cut)

    @classmethod
    def from_hf(cls, hf: dict, path="config.json") -> "ModelConfig":
        """Translate a Hugging Face config.json dict. Raises ModelFormatError naming `path`."""
        arch = hf.get("model_type")
        if arch == "gemma3" and isinstance(hf.get("text_config"), dict):  # the multimodal config: its text model
            hf = {"tie_word_embeddings": hf.get("tie_word_embeddings", True), **hf["text_config"]}
        arch = MODEL_TYPE_ALIASES.get(arch, arch)
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitecture(path, str(arch or hf.get("architectures")), SUPPORTED_ARCHITECTURES)
        try:
            if arch in GEMMA_ARCHITECTURES:
                return _from_hf(arch, hf).replace(**_gemma_fields(arch, hf))
            if arch == "deepseek_v2":
                return _from_hf(arch, hf).replace(**_deepseek_v2_fields(hf))
            if arch == "gpt_oss":
                return _from_hf(arch, hf).replace(**_gpt_oss_fields(hf))
            return _from_hf(arch, hf)
        except (KeyError, TypeError, ValueError, AssertionError, ArithmeticError) as e:  # e.g. n_kv_heads = 0
            raise ModelFormatError(path, f"invalid {arch} config: {type(e).__name__}: {e}") from None


def _from_hf(arch: str, hf: dict) -> ModelConfig:
    n_layers = int(hf["num_hidden_layers"])
    n_heads = int(hf["num_attention_heads"])
    dim = int(hf["hidden_size"])
    # checked before anything below divides by them or sizes a tuple with them
    if min(n_layers, n_heads, dim) <= 0:
        raise ValueError(f"layers, heads and hidden size must be positive, got {n_layers}, {n_heads}, {dim}")
    # v5 keeps rope_theta inside rope_parameters; v4 had it at the top level next to rope_scaling.
    rope_params = dict(hf.get("rope_parameters") or {})
    rope_theta = float(rope_params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_scaling = RopeScaling.from_hf(hf_rope_params(arch, hf, hf.get("rope_scaling") or rope_params))
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if layer_types:
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
    elif arch in ("mistral", "mixtral", "phi3"):
        windows = (window,) * n_layers
    elif hf.get("use_sliding_window") and window:
        windows = tuple(window if i >= hf.get("max_window_layers", 0) else None for i in range(n_layers))
    else:
        windows = (None,) * n_layers

    moe = None
    moe_layers = (False,) * n_layers
    if arch == "mixtral":
        moe = MoeConfig(hf["num_local_experts"], hf["num_experts_per_tok"], hf["intermediate_size"],
                        router="topk_softmax", norm_topk_prob=True)
        moe_layers = (True,) * n_layers
    elif arch in ("qwen2_moe", "qwen3_moe", "olmoe"):
        # Hub checkpoints say num_experts; transformers 5 saves some as num_local_experts.
        moe = MoeConfig(
            hf.get("num_experts") or hf["num_local_experts"], hf["num_experts_per_tok"],
            # OLMoE's experts use intermediate_size; the Qwen MoEs have a separate expert width.
            hf["intermediate_size"] if arch == "olmoe" else hf["moe_intermediate_size"],
            router="softmax_topk", norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            shared_expert_hidden_dim=int(hf.get("shared_expert_intermediate_size") or 0) if arch == "qwen2_moe" else 0,
            router_scale=float(hf.get("glassbox_router_scale") or 1.0),
        )
        step = int(hf.get("decoder_sparse_step") or 1)
        dense_only = set(hf.get("mlp_only_layers") or ())
        moe_layers = tuple(i not in dense_only and (i + 1) % step == 0 for i in range(n_layers))

    qkv_bias = bool(hf.get("attention_bias", False)) or arch in ("qwen2", "qwen2_moe") and hf.get("qkv_bias", True)
    return ModelConfig(
        arch=arch,
        vocab_size=int(hf["vocab_size"]),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or dim // n_heads),
        hidden_dim=int(hf.get("intermediate_size") or 0),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bool(qkv_bias),
        o_bias=bool(hf.get("attention_bias", False)) and arch in ("llama", "mistral", "qwen3", "qwen3_moe", "olmoe",
                                                                       "granite", "smollm3"),
        qk_norm={"qwen3": "head", "qwen3_moe": "head", "olmoe": "full"}.get(arch, "none"),
        clip_qkv=hf.get("clip_qkv"),
        sliding_windows=windows,
        moe=moe,
        moe_layers=moe_layers,
        **hf_extra_fields(arch, hf, n_layers, int(hf.get("head_dim") or dim // n_heads), rope_params),
    )


GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")


def _gemma_fields(arch: str, hf: dict) -> dict:
    """What a Gemma config.json means beyond the fields every architecture shares (read by _from_hf)."""
    n_layers, dim = int(hf["num_hidden_layers"]), int(hf["hidden_size"])
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    # Gemma 1's released configs say "gelu", which its reference reads as the tanh approximation.
    if activation != "gelu_pytorch_tanh" and not (arch == "gemma" and activation == "gelu"):
        raise ValueError(f"hidden activation {activation!r} (Gemma runs gelu_pytorch_tanh)")
    fields = dict(embed_scale=dim ** 0.5, norm_weight_offset=1.0, mlp_activation="gelu_tanh",
                  tie_embeddings=bool(hf.get("tie_word_embeddings", True)), o_bias=bool(hf.get("attention_bias")))
    if arch == "gemma":
        return fields
    window = int(hf.get("sliding_window") or 4096)
    pattern = 2 if arch == "gemma2" else int(hf.get("sliding_window_pattern") or 6)  # every Nth layer is global
    layer_types = hf.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                            for i in range(n_layers)]
    if len(layer_types) != n_layers:
        raise ValueError(f"layer_types lists {len(layer_types)} layers, the model has {n_layers}")
    fields.update(
        sliding_windows=tuple(window if t == "sliding_attention" else None for t in layer_types),
        post_norms=True,
        query_scale=float(hf.get("query_pre_attn_scalar") or 256) ** -0.5,
        final_logit_softcap=hf.get("final_logit_softcapping", 30.0 if arch == "gemma2" else None),
    )
    if arch == "gemma2":
        fields["attn_logit_softcap"] = hf.get("attn_logit_softcapping", 50.0)
        return fields
    # Gemma 3: v5 configs nest RoPE per layer type; v4 ones say rope_theta, rope_local_base_freq, rope_scaling.
    params = hf.get("rope_parameters") or {}
    full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    fields.update(
        qk_norm="head",
        rope_theta=float(full.get("rope_theta") or hf.get("rope_theta") or 1_000_000.0),
        rope_scaling=RopeScaling.from_hf(hf.get("rope_scaling") or full),
        local_rope_theta=float(local.get("rope_theta") or hf.get("rope_local_base_freq") or 10_000.0),
    )
    return fields


def _deepseek_v2_fields(hf: dict) -> dict:
    """DeepSeek-V2 (and -Lite): MLA, and MoE with shared experts and group-limited routing after
    first_k_dense_replace dense layers (every moe_layer_freq-th layer from there, as DeepSeek's own code)."""
    n_layers = int(hf["num_hidden_layers"])
    if (hf.get("hidden_act") or "silu") != "silu" or (hf.get("scoring_func") or "softmax") != "softmax":
        raise ValueError(f"activation {hf.get('hidden_act')!r} / scoring {hf.get('scoring_func')!r} "
                         "(DeepSeek-V2 runs silu and softmax)")
    q_lora = hf.get("q_lora_rank")
    mla = MlaConfig(int(hf["kv_lora_rank"]), int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"]),
                    int(hf["v_head_dim"]), int(q_lora) if q_lora else None, bool(hf.get("attention_bias")))
    fields = dict(mla=mla, head_dim=mla.qk_rope_head_dim, rotary_dim=mla.qk_rope_head_dim,
                  n_kv_heads=int(hf["num_attention_heads"]),
                  qkv_bias=False, o_bias=bool(hf.get("attention_bias")))
    n_experts = hf.get("n_routed_experts") or hf.get("num_experts")
    if not n_experts:
        return fields
    method = hf.get("topk_method") or "greedy"
    if method not in ("greedy", "group_limited_greedy"):
        raise ValueError(f"topk_method {method!r} (DeepSeek-V2 routes 'greedy' or 'group_limited_greedy')")
    grouped = method == "group_limited_greedy"
    fields["moe"] = MoeConfig(
        int(n_experts), int(hf["num_experts_per_tok"]), int(hf["moe_intermediate_size"]),
        router="softmax_topk", norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        shared_expert_hidden_dim=int(hf.get("n_shared_experts") or 0) * int(hf["moe_intermediate_size"]),
        shared_expert_gated=False,
        n_group=int(hf.get("n_group") or 1) if grouped else 1,
        topk_group=int(hf.get("topk_group") or 1) if grouped else 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0))
    first_dense, freq = int(hf.get("first_k_dense_replace") or 0), int(hf.get("moe_layer_freq") or 1)
    fields["moe_layers"] = tuple(i >= first_dense and i % freq == 0 for i in range(n_layers))
    return fields


def _gpt_oss_fields(hf: dict) -> dict:
    """gpt-oss: attention sinks and biases everywhere in attention; every layer a MoE whose router has a
    bias and picks the top k logits, softmaxed over those k (= Mixtral's rule), with biased experts and a
    clamped SwiGLU. Sliding and full layers alternate per `layer_types` (read by _from_hf)."""
    n_layers = int(hf["num_hidden_layers"])
    k = hf.get("num_experts_per_tok") or hf.get("experts_per_token")  # the older configs' name
    moe = MoeConfig(int(hf["num_local_experts"]), int(k), int(hf["intermediate_size"]),
                    router="topk_softmax", norm_topk_prob=True, router_bias=True, expert_bias=True,
                    swiglu_limit=float(hf.get("swiglu_limit") or 7.0), swiglu_alpha=float(hf.get("swiglu_alpha") or 1.702))
    bias = bool(hf.get("attention_bias", True))
    fields = dict(attn_sinks=True, moe=moe, moe_layers=(True,) * n_layers, qkv_bias=bias, o_bias=bias)
    if not hf.get("layer_types") and hf.get("sliding_window"):  # transformers' default: even layers slide
        fields["sliding_windows"] = tuple(int(hf["sliding_window"]) if i % 2 == 0 else None for i in range(n_layers))
    return fields
