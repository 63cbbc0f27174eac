"""One-token decode of one sequence with fixed shapes, so it can be captured as a CUDA graph.

A CUDA graph replays recorded kernels on the same memory, so every input must live in a buffer that
is refilled in place and every shape must be fixed. The ordinary paged view fails both: its tensors are
new each step and its key length S grows. Here S is a *bucket* (a multiple of the KV block size, e.g.
64, 128, ..., the context): the sequence's block table is padded to the bucket with a valid block and
the padding is masked out by a mask computed on the device from the context length, so nothing needs
a host sync. One graph is captured per bucket on first use (a few hundred ms each) and replayed after.

Only the plain path is captured: batch 1, no probe (instrumentation off), dense layers, RoPE tables
that do not depend on the length (not dynamic NTK). Anything else runs eagerly, as before. On the CPU
the same step runs eagerly (no graph); tests use that to check it against the ordinary view.
Shape legend: S bucket (key positions), K kv heads, d head_dim, V vocab.
"""
from __future__ import annotations

import torch

from engine.kv_cache import causal_mask


class StaticView:
    """The paged view's interface (positions, update, mask) over fixed buffers."""

    def __init__(self, pool, bucket: int, device):
        self.pool, self.bucket = pool, bucket
        self.positions = torch.zeros(1, 1, dtype=torch.long, device=device)  # [1, 1]
        self.rope_long = torch.zeros(1, dtype=torch.bool, device=device)  # [1]: LongRoPE's long factors throughout
        self.slots = torch.zeros(1, dtype=torch.long, device=device)  # [1]
        self.read_slots = torch.zeros(1, bucket, dtype=torch.long, device=device)  # [1, S]
        self.k_pos = torch.arange(bucket, device=device).unsqueeze(0)  # [1, S]
        self._masks: dict = {}  # per window, built once per forward (and once per captured graph)

    def fill(self, position: int, slot: int, block_ids: list[int], rope_long: bool = False) -> None:
        P = self.pool.block_size
        n = self.bucket // P
        padded = torch.tensor(block_ids + [block_ids[0]] * (n - len(block_ids)), dtype=torch.long)
        slots = (padded.unsqueeze(-1) * P + torch.arange(P)).flatten()
        self.read_slots.copy_(slots.unsqueeze(0), non_blocking=True)
        self.positions.fill_(position)
        self.rope_long.fill_(rope_long)
        self.slots.fill_(slot)
        self._masks.clear()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [1, K, 1, d] into the slot; return the bucket's K/V [1, K, S, d]."""
        pool_k, pool_v = self.pool.k[layer], self.pool.v[layer]
        pool_k.index_copy_(0, self.slots, k.transpose(1, 2).reshape(-1, k.shape[1], k.shape[-1]))
        pool_v.index_copy_(0, self.slots, v.transpose(1, 2).reshape(-1, v.shape[1], v.shape[-1]))
        return pool_k[self.read_slots].transpose(1, 2), pool_v[self.read_slots].transpose(1, 2)

    def mask(self, window: int | None) -> torch.Tensor:
        """[1, 1, 1, S] from the position buffer: causal (which also hides the padding), within the window."""
        if window not in self._masks:
            self._masks[window] = causal_mask(self.positions, self.k_pos, window).unsqueeze(1)
        return self._masks[window]


def graphable(model, probe) -> bool:
    """Whether a decode step of this model can use the static path at all."""
    config = model.config
    return probe is None and not any(config.moe_layers) and not model.rope.dynamic


class StaticDecoder:
    """Batch-1 decode steps over per-bucket static views; CUDA graphs when the pool is on a GPU."""

    def __init__(self, model, pool, use_graphs: bool | None = None, smallest_bucket: int = 64):
        self.model, self.pool = model, pool
        self.device = pool.k.device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        P = pool.block_size
        self.smallest = max(P, -(-smallest_bucket // P) * P)
        self.tokens = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._views: dict[int, StaticView] = {}
        self._graphs: dict[int, tuple] = {}  # bucket -> (graph, logits buffer)

    def bucket_for(self, context_len: int) -> int:
        """The smallest power-of-two multiple of the smallest bucket that holds the context."""
        bucket = self.smallest
        while bucket < context_len:
            bucket *= 2
        return bucket

    @torch.inference_mode()
    def decode(self, token: int, position: int, slot: int, block_ids: list[int],
               rope_long: bool = False) -> torch.Tensor:
        """Logits [1, 1, V] (fp32) for `token` at `position`, its K/V written to `slot`."""
        bucket = self.bucket_for(position + 1)
        view = self._views.get(bucket)
        if view is None:
            view = self._views[bucket] = StaticView(self.pool, bucket, self.device)
        view.fill(position, slot, block_ids, rope_long)
        self.tokens.fill_(token)
        if not self.use_graphs:
            return self.model(self.tokens, view)
        if bucket not in self._graphs:
            self._graphs[bucket] = self._capture(view)
        graph, logits = self._graphs[bucket]
        graph.replay()
        return logits

    def _capture(self, view: StaticView):
        # Warm up on a side stream (allocations and lazy inits must not happen during capture), then
        # record. The warm-up and the capture write this step's K/V into its own slot: harmless, the
        # replay writes the same values again.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model(self.tokens, view)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.model(self.tokens, view)
        return graph, logits
