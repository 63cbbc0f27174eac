"""The tensor side of the paged KV cache: one pre-allocated pool of fixed-size blocks per layer,
and the per-step view attention reads and writes through.

Bookkeeping (which sequence owns which block, prefix hashes, copy-on-write) lives in
engine/paging and uses no torch; this file only moves tensors where that bookkeeping says.
Shape legend: L layers, N blocks, P block size, K kv heads, d head_dim, B sequences in the
step, T new tokens per sequence, S = longest context in the step rounded up to whole blocks.
"""
from __future__ import annotations

import functools

import torch

from engine.config import ModelConfig
from engine.kv_cache import causal_mask
from engine.layers.mla import per_head_kv_values


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """K and V of every layer; for an MLA model its latent and RoPE key (ModelConfig.kv_entry)."""
    (k_heads, k_dim), (v_heads, v_dim) = config.kv_entry
    return config.n_layers * (k_heads * k_dim + v_heads * v_dim) * torch.finfo(dtype).bits // 8


def blocks_for_budget(config: ModelConfig, block_size: int, budget_bytes: int, dtype: torch.dtype) -> int:
    return max(1, budget_bytes // (kv_bytes_per_token(config, dtype) * block_size))


def _lazy_zeros(shape, device, dtype) -> torch.Tensor:
    """Zeros whose memory the OS hands out only when a block is first written. torch.zeros writes every
    byte of the CPU pool up front (0.5 GiB resident at the default budget); numpy's zeros come from
    calloc, which maps fresh zero pages for large sizes. Zeros, not garbage: masked-out slots still go
    through SDPA, and a NaN there would spread."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, device=device, dtype=dtype)
    import numpy as np

    same_width = {2: np.int16, 4: np.int32, 8: np.int64}[torch.finfo(dtype).bits // 8]
    return torch.from_numpy(np.zeros(shape, dtype=same_width)).view(dtype)


class KVPool:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, device="cpu", dtype=torch.float32):
        self.num_blocks, self.block_size = num_blocks, block_size
        # Slots are stored flat ([N*P] rather than [N, P]) so a write is one index_copy_ by slot number.
        # [L, N*P, K, d] each; an MLA model's latent c_kv and RoPE key k_pe take K's and V's places.
        (k_heads, k_dim), (v_heads, v_dim) = config.kv_entry
        self.k = _lazy_zeros((config.n_layers, num_blocks * block_size, k_heads, k_dim), device, dtype)
        self.v = _lazy_zeros((config.n_layers, num_blocks * block_size, v_heads, v_dim), device, dtype)
        # What the memory panel compares for an MLA model: values a token and layer stored, and what per-head
        # K and V would hold (0, 0 for every other architecture: what is stored *is* per-head K and V).
        self.latent_values = (k_heads * k_dim + v_heads * v_dim) if config.mla is not None else 0
        self.per_head_values = per_head_kv_values(config) if config.mla is not None else 0
        # Where each layer's K/V are gathered for attention, reused by every layer and step and grown by
        # doubling: gathering into fresh tensors made 2 context-sized allocations per layer per step, and
        # their growing sizes left the allocator's heap ~15 KB per token of context bigger (measured).
        self._gather: list[torch.Tensor] = []
        self._gather_rows: tuple | None = None  # (rows, k buffer, v buffer) of the last size asked: one slice per step, not per layer
        # Each layer's slice of the pools, taken once: indexing self.k[layer] was 2 aten calls per layer per step.
        self.k_layers, self.v_layers = list(self.k.unbind(0)), list(self.v.unbind(0))

    def gather(self, layer: int, read_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V at read_slots [B, S]: [B, S, K, d] each, in the shared buffers (valid
        until the next call: a layer's attention uses them before the next layer gathers)."""
        B, S = read_slots.shape
        return self.gather_flat(layer, read_slots.reshape(-1), B, S)

    def gather_flat(self, layer: int, flat: torch.Tensor, B: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """gather() with read_slots already flattened to [B*S] (a view computes that once per step)."""
        rows = B * S
        if self._gather_rows is None or self._gather_rows[0] != rows:
            if not self._gather or self._gather[0].shape[0] < rows:
                capacity = max(rows, 2 * self._gather[0].shape[0] if self._gather else 0)
                self._gather = [pool.new_empty((capacity, *pool.shape[2:])) for pool in (self.k, self.v)]
            self._gather_rows = (rows, self._gather[0][:rows], self._gather[1][:rows])
        _, k_out, v_out = self._gather_rows
        k = torch.index_select(self.k_layers[layer], 0, flat, out=k_out)
        v = torch.index_select(self.v_layers[layer], 0, flat, out=v_out)
        return k.view(B, S, *k.shape[1:]), v.view(B, S, *v.shape[1:])

    @property
    def nbytes(self) -> int:
        return (self.k.numel() + self.v.numel()) * self.k.element_size()

    def copy_blocks(self, copies) -> None:
        """Execute copy-on-write instructions: each (src, dst) copies one whole block, every layer."""
        P = self.block_size
        for src, dst in copies:
            self.k[:, dst * P:(dst + 1) * P] = self.k[:, src * P:(src + 1) * P]
            self.v[:, dst * P:(dst + 1) * P] = self.v[:, src * P:(src + 1) * P]

    def view(self, positions, slots, block_tables, context_lens, rope_long=None) -> "PagedView":
        return PagedView(self, positions, slots, block_tables, context_lens, rope_long)


class PagedView:
    """One forward step over B sequences: where each new token's K/V go, and what each may read.

    positions [B, T] (absolute positions of the new tokens), slots [B*T] (flat slot per new
    token), block_tables [B, nb] (padded with any valid block id), context_lens [B] (tokens in
    each sequence *after* this step), rope_long [B] (LongRoPE: rows rotated with the long factors whatever
    their positions; None = none).
    """

    def __init__(self, pool: KVPool, positions, slots, block_tables, context_lens, rope_long=None):
        device = pool.k.device
        self.pool = pool
        self.rope_long = torch.as_tensor(rope_long, device=device) if rope_long is not None and any(rope_long) else None
        self.positions = torch.as_tensor(positions, device=device)
        self.slots = torch.as_tensor(slots, device=device)
        tables = torch.as_tensor(block_tables, device=device)
        self.block_tables = tables  # [B, nb]: the C++ decode step reads the pool through them (fused_decode.py)
        # One sequence's chunk from position 0: plain causal attention, no mask needed (layers/attention.py).
        self.causal_from_zero = len(positions) == 1 and len(positions[0]) > 1 and int(positions[0][0]) == 0
        self.context_lens = torch.as_tensor(context_lens, device=device)
        self._masks: dict = {}

    # Built on first use, then once per step, not per layer; a C++ decode step never asks for them.
    @functools.cached_property
    def read_slots(self) -> torch.Tensor:
        """Every slot each sequence may read, in position order: [B, nb*P]."""
        P = self.pool.block_size
        return (self.block_tables.unsqueeze(-1) * P + torch.arange(P, device=self.block_tables.device)).flatten(1)

    @functools.cached_property
    def _flat_read_slots(self) -> torch.Tensor:
        return self.read_slots.reshape(-1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, K, T, d] into their slots; return each sequence's K/V [B, K, S, d]."""
        return self.update_tokens_major(layer, k.transpose(1, 2), v.transpose(1, 2))

    def update_tokens_major(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """update() for k, v already in [B, T, K, d] (the layout the fused projection makes them in): the
        same copies without transposing there and back; returns [B, K, S, d] like update()."""
        B, T, K, d = k.shape
        self.pool.k_layers[layer].index_copy_(0, self.slots, k.reshape(B * T, K, d))
        self.pool.v_layers[layer].index_copy_(0, self.slots, v.reshape(B * T, v.shape[2], v.shape[3]))
        k_all, v_all = self.pool.gather_flat(layer, self._flat_read_slots, B, self.read_slots.shape[1])  # [B, S, K, d]
        return k_all.transpose(1, 2), v_all.transpose(1, 2)

    def mask(self, window: int | None) -> torch.Tensor:
        """[B, 1, T, S]: causal by absolute position, within the window, and inside each context."""
        if window not in self._masks:
            S = self.read_slots.shape[1]
            k_pos = torch.arange(S, device=self.positions.device)
            mask = causal_mask(self.positions, k_pos.expand(len(self.positions), -1), window)  # [B, T, S]
            mask &= (k_pos < self.context_lens.unsqueeze(-1)).unsqueeze(1)
            self._masks[window] = mask.unsqueeze(1)
        return self._masks[window]
