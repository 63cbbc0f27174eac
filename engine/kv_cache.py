"""A contiguous per-layer K/V cache for one batch of sequences that grow together.

Simple by design: it reserves max_len slots for every sequence up front. The paged cache
(blocks, sharing, prefix reuse) is the engine's real cache; this one stays as the plain
reference the paged one is tested against. Attention sees either through a *view*: the
per-forward object with `positions`, `update(layer, k, v)` and `mask(window)`.
Shape legend: L layers, B batch, K kv heads, S positions, T new tokens, d head_dim.
"""
from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.errors import ContextOverflow


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask (True = may attend) from query positions [..., T] and key positions [..., S].

    Causal, and within `window` positions when set (the token itself plus window-1 before it,
    as Mistral defines it). Returns [..., T, S].
    """
    q = q_pos.unsqueeze(-1)
    k = k_pos.unsqueeze(-2)
    mask = k <= q
    if window is not None:
        mask &= (q - k) < window
    return mask


class ContiguousKVCache:
    def __init__(self, config: ModelConfig, max_len: int, batch: int = 1, device="cpu", dtype=torch.float32):
        # [L, B, K, S, d]; an MLA model keeps its latent and RoPE key in these two (ModelConfig.kv_entry)
        (k_heads, k_dim), (v_heads, v_dim) = config.kv_entry
        self.k = torch.zeros((config.n_layers, batch, k_heads, max_len, k_dim), device=device, dtype=dtype)
        self.v = torch.zeros((config.n_layers, batch, v_heads, max_len, v_dim), device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions [0, length) hold valid K/V

    def view(self, start_pos: int, num_tokens: int) -> "ContiguousView":
        end = start_pos + num_tokens
        if end > self.max_len:
            raise ContextOverflow(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        if start_pos > self.length:
            raise ValueError(f"gap in the cache: it holds {self.length} positions, writing from {start_pos}")
        self.length = end
        return ContiguousView(self, start_pos, num_tokens)

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (the slots are simply overwritten later)."""
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return (self.k.numel() + self.v.numel()) * self.k.element_size()


class ContiguousView:
    """Positions start_pos .. start_pos+T-1 of every sequence in a ContiguousKVCache."""

    def __init__(self, cache: ContiguousKVCache, start_pos: int, num_tokens: int):
        self.cache, self.start, self.end = cache, start_pos, start_pos + num_tokens
        device = cache.k.device
        batch = cache.k.shape[1]
        self.positions = torch.arange(self.start, self.end, device=device).expand(batch, -1)  # [B, T]
        self._masks: dict[int | None, torch.Tensor | None] = {}
        self.causal_from_zero = start_pos == 0 and num_tokens > 1  # plain causal attention (layers/attention.py)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v [B, K, T, d] and return every position's K/V so far, [B, K, S, d] each."""
        self.cache.k[layer, :, :, self.start:self.end] = k
        self.cache.v[layer, :, :, self.start:self.end] = v
        return self.cache.k[layer, :, :, :self.end], self.cache.v[layer, :, :, :self.end]

    def mask(self, window: int | None) -> torch.Tensor | None:
        """[1, 1, T, S] boolean mask, or None when every cached position is visible (SDPA's fast path)."""
        if window not in self._masks:
            T = self.end - self.start
            if T == 1 and (window is None or self.end <= window):
                self._masks[window] = None
            else:
                k_pos = torch.arange(self.end, device=self.positions.device)
                self._masks[window] = causal_mask(self.positions[0], k_pos, window)[None, None]
        return self._masks[window]
