"""A contiguous per-layer K/V cache for one batch of sequences that grow together.

Simple by design: it reserves max_len slots for every sequence up front. The paged cache
(blocks, sharing, prefix reuse) replaces it; attention only relies on `update`.
Shape legend: L layers, B batch, K kv heads, S max positions, d head_dim.
"""
from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.errors import ContextOverflow


class ContiguousKVCache:
    def __init__(self, config: ModelConfig, max_len: int, batch: int = 1, device="cpu", dtype=torch.float32):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)  # [L, B, K, S, d]
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions [0, length) hold valid K/V

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int):
        """Store k, v [B, K, T, d] at positions start_pos.. and return all K/V up to the end of them."""
        end = start_pos + k.shape[2]
        if end > self.max_len:
            raise ContextOverflow(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer, :, :, start_pos:end] = k
        self.v[layer, :, :, start_pos:end] = v
        if layer == self.k.shape[0] - 1:
            self.length = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (the slots are simply overwritten later)."""
        self.length = min(self.length, length)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
