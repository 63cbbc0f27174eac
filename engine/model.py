"""The decoder-only transformer: embed -> blocks (attention + dense or MoE MLP) -> norm -> LM head.

One class covers every supported architecture; the differences (biases, q/k-norm, sliding
windows, MoE conventions) are fields of ModelConfig. Float-only: quantization swaps modules.
Shape legend: B batch, T new tokens, S cached+new tokens, D dim, V vocab.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.config import ModelConfig
from engine.layers.attention import Attention
from engine.layers.mlp import SwiGLU
from engine.layers.moe import SparseMoE
from engine.layers.norm import RMSNorm
from engine.layers.rope import RopeTable


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.is_moe = config.moe_layers[layer_idx]
        self.mlp = SparseMoE(config.dim, config.moe) if self.is_moe else SwiGLU(config.dim, config.hidden_dim)

    def forward(self, x, cos, sin, kv, probe=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, kv, probe)
        h = self.mlp_norm(x)
        return x + (self.mlp(h, self.layer_idx, probe) if self.is_moe else self.mlp(h))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RopeTable(config)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, kv, probe=None, last_only: bool = False):
        """Run `tokens` [B, T] through the model; `kv` is a cache view for this step (it knows the
        tokens' positions, where their K/V go and what each may attend to). Returns fp32 logits
        [B, T, V], or [B, 1, V] with last_only."""
        cos, sin = self.rope.cos_sin(kv.positions)  # [B, T, d] each
        cos, sin = cos.to(self.embed.weight.dtype), sin.to(self.embed.weight.dtype)
        x = self.embed(tokens)  # [B, T, D]
        for layer in self.layers:
            x = layer(x, cos, sin, kv, probe)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        logits = x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)
        return logits.float()  # [B, T, V]

    @classmethod
    def from_tensors(cls, config: ModelConfig, tensors: dict[str, torch.Tensor], device="cpu",
                     dtype=torch.float32, packed: set[str] = frozenset()) -> "Decoder":
        """Build the model around already-loaded canonical tensors (docs/weights.md) without copying twice.
        `packed` names weights the caller installs itself as quantized modules (engine/quant); they
        stay on the meta device here."""
        with torch.device("meta"), _SkipInit():
            model = cls(config)
        state = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
        result = model.load_state_dict(state, strict=not packed, assign=True)
        if packed and (set(result.missing_keys) - set(packed) or result.unexpected_keys):
            raise RuntimeError(f"weights missing {sorted(set(result.missing_keys) - set(packed))[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]}")
        model.rope = RopeTable(config, device=device)
        return model.eval()

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of parameters by dtype name (the memory panel's 'weights' bar)."""
        out: dict[str, int] = {}
        for p in self.parameters():
            key = str(p.dtype).removeprefix("torch.")
            out[key] = out.get(key, 0) + p.numel() * p.element_size()
        seen = set()  # quantized modules (engine/quant) hold their packed weights outside parameters
        for module in self.modules():
            for w in getattr(module, "quant_weights", lambda: [])():
                if id(w) not in seen:  # a tied embedding and LM head share one
                    seen.add(id(w))
                    out[w.kind] = out.get(w.kind, 0) + w.nbytes
        return out


class _SkipInit(TorchFunctionMode):
    """Skips torch.nn.init while a model is built on the meta device: its weights are replaced by
    loaded ones anyway, and random init of a meta tensor runs PyTorch's Python reference kernels,
    whose first use imports torch._dynamo and sympy (~1.5 s of imports in the loading thread, holding
    the GIL in stretches of 0.3 s: the GUI thread stalled)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **(kwargs or {}))
