"""What the window and the engine say about a model: how to load it (LoadOptions) and what was loaded
(ModelFacts). Plain frozen values, so a widget can build or show them without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, fields

@dataclass(frozen=True, slots=True)
class LoadOptions:
    device: str = "auto"  # "auto" (CUDA when present) | "cpu" | "cuda"
    dtype: str = "auto"  # "auto" (fp32 on the CPU, bf16 on CUDA) | "float32" | "bfloat16" | "float16"
    rope_scaling: str | None = None  # e.g. "yarn:4": stretch the trained context 4x
    kv_budget_gib: float = 0.5  # CPU: the KV pool's size; CUDA: ignored in favour of kv_gpu_fraction
    kv_gpu_fraction: float = 0.3  # CUDA: share of free GPU memory the KV pool takes after loading
    kv_block_size: int = 16
    context_length: int = 0  # 0 = the model's own (times the RoPE override's factor); else this many tokens
    # engine/quant: auto keeps a GGUF's Q8_0/Q4_0/Q4_1 weights packed on the CPU (float elsewhere);
    # none = all float; int8 / int4-gN quantize every linear at load time.
    quant: str = "auto"
    quant_head: bool = True  # quantize the LM head and embedding too
    quant_exact: bool = False  # CPU fp32: feed quantized matmuls fp32 (exact, slow) instead of bf16
    # MoE on a GPU too small for every expert: experts stay in CPU memory, the used ones are copied
    # per step (engine/runtime/moe_offload.py). Float weights only.
    expert_offload: bool = False
    # CPU threads for the engine's matmuls: 0 = one per physical core (engine/device.py); None = leave the
    # process's setting alone (scripts and benchmarks that set torch's count themselves).
    threads: int | None = None
    # LoRA adapters loaded onto the model after it is built: (folder, scale) each, enabled (Engine.add_adapter).
    adapters: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.kv_budget_gib <= 0 or not 0 < self.kv_gpu_fraction < 1:
            raise ValueError("the KV budget must be positive and the GPU fraction in (0, 1)")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: one per physical core), got {self.threads}")
        if self.kv_block_size < 1 or self.context_length < 0:
            raise ValueError("the KV block size must be >= 1 and the context length >= 0")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

@dataclass(frozen=True, slots=True)
class ModelFacts:
    """The loaded model as the window shows it (model panel, routing and attention panels, status line)."""

    name: str
    path: str
    architecture: str
    parameters: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int  # 0: a dense model
    experts_per_token: int
    dense_layers: tuple[int, ...]  # layers of an MoE that keep a dense MLP (mlp_only_layers)
    context: int
    vocab: int
    dtype: str
    device: str
    rope: str
    weight_bytes: tuple[tuple[str, int], ...]  # (kind, bytes), largest first: "float32", "int4", "Q4_1", ...
    supports_tools: bool  # the chat template renders a `tools` list
    # Group-limited routing (DeepSeek-V2): experts in expert_groups equal groups, each token choosing among
    # its expert_groups_kept best groups; 1, 0 = plain top-k over every expert.
    expert_groups: int = 1
    expert_groups_kept: int = 0
    # Multi-head latent attention (DeepSeek-V2): values its KV cache keeps a token and layer (latent + RoPE
    # key) instead of per-head K and V; 0 for every other attention.
    kv_latent: int = 0
    # Per layer: the sliding window (attends to this many latest positions) or None for a global layer
    # (Gemma 2/3, Mistral); () when unknown.
    sliding_windows: tuple[int | None, ...] = ()

    @property
    def weights(self) -> str:
        """'int4 56.6 MB + float32 28.3 MB': the weights by kind, as the model panel and status line say it."""
        return " + ".join(f"{kind} {n / 1e6:.1f} MB" for kind, n in self.weight_bytes if n > 0)
