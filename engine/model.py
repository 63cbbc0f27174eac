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
from engine.layers.mla import MLAttention
from engine.layers.mlp import SwiGLU
from engine.layers.moe import SparseMoE
from engine.layers.norm import RMSNorm
from engine.layers.rope import RopeTable


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        offset = config.norm_weight_offset
        self.attn_norm = RMSNorm(config.dim, config.norm_eps, offset)
        self.attn = MLAttention(config, layer_idx) if config.mla is not None else Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps, offset)
        self.is_moe = config.moe_layers[layer_idx]
        self.mlp = (SparseMoE(config.dim, config.moe) if self.is_moe
                    else SwiGLU(config.dim, config.hidden_dim, config.mlp_activation))
        # Gemma 2/3 also normalise each sublayer's output before it joins the residual stream.
        self.attn_post_norm = RMSNorm(config.dim, config.norm_eps, offset) if config.post_norms else None
        self.mlp_post_norm = RMSNorm(config.dim, config.norm_eps, offset) if config.post_norms else None
        # Gemma 3's sliding-window layers rotate with their own RoPE table (Decoder.run_blocks picks it).
        self.local_rope = config.local_rope_theta is not None and config.sliding_windows[layer_idx] is not None
        self.residual_multiplier = config.residual_multiplier  # Granite scales each sublayer's output

    def forward(self, x, cos, sin, kv, probe=None):
        h = self.attn(self.attn_norm(x), cos, sin, kv, probe)
        if self.attn_post_norm is not None:
            h = self.attn_post_norm(h)
        x = x + (h if self.residual_multiplier == 1.0 else h * self.residual_multiplier)
        h = self.mlp_norm(x)
        h = self.mlp(h, self.layer_idx, probe) if self.is_moe else self.mlp(h)
        if self.mlp_post_norm is not None:
            h = self.mlp_post_norm(h)
        return x + (h if self.residual_multiplier == 1.0 else h * self.residual_multiplier)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps, config.norm_weight_offset)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RopeTable(config)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, kv, probe=None, last_only: bool = False):
        """Run `tokens` [B, T] through the model; `kv` is a cache view for this step (it knows the
        tokens' positions, where their K/V go and what each may attend to). Returns fp32 logits
        [B, T, V], or [B, 1, V] with last_only."""
        x = self.run_blocks(tokens, kv, probe)
        if last_only:
            x = x[:, -1:]
        return self.head(x)

    def run_blocks(self, tokens: torch.Tensor, kv, probe=None, upto: int | None = None, each=None) -> torch.Tensor:
        """Embed `tokens` [B, T] and run blocks 0..upto-1 (all by default): the residual stream [B, T, D].
        `each(layer, x)` sees the residual after every block. The one place the stack is walked, so that the
        logit lens, attention replays and self-drafts run the model exactly as generation does."""
        dtype = self.embed.weight.dtype
        cos, sin = self.rope.cos_sin(kv.positions, getattr(kv, "rope_long", None))  # [B, T, d] each
        cos, sin = cos.to(dtype), sin.to(dtype)
        local = self.rope.local_cos_sin(kv.positions)  # the sliding-window layers' own table, if any
        local = (local[0].to(dtype), local[1].to(dtype)) if local is not None else (cos, sin)
        x = self.embed(tokens)  # [B, T, D]
        if self.config.embed_scale != 1.0:  # Gemma: sqrt(dim), rounded to the model's dtype as the reference does
            x = x * torch.tensor(self.config.embed_scale, dtype=x.dtype)
        for layer in self.layers[:upto]:
            x = layer(x, *(local if layer.local_rope else (cos, sin)), kv, probe)
            if each is not None:
                each(layer.layer_idx, x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Residual rows [..., D] -> fp32 logits [..., V]: the final norm, then the LM head (or the tied embedding)."""
        x = self.norm(x)
        logits = x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)
        if (cap := self.config.final_logit_softcap) is not None:  # Gemma 2: logits squashed into (-cap, cap)
            logits = torch.tanh(logits / cap) * cap
        if self.config.logit_divisor != 1.0:  # Granite's logits_scaling
            logits = logits / self.config.logit_divisor
        return logits.float()

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
