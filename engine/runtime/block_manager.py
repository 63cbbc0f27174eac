"""Paged KV bookkeeping: which block holds which tokens, who shares it, what can be reused.

Plain Python, no torch: blocks are integers, and the tensor side (engine/runtime/kv_pool.py) moves K/V
where this says. Owns reference counts, the free list, prefix caching (a full block is keyed by
a hash of every token up to and including it), an LRU of cached blocks nobody owns, copy-on-write
for forks, and rollback. `check_invariants` proves nothing leaks.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from engine.errors import EngineError


class OutOfKVBlocks(EngineError):
    """The KV pool cannot hold what was asked; nothing was changed."""


@dataclass
class BlockTable:
    """One sequence's view of the pool: its tokens (known so far) and the blocks holding their K/V."""

    block_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens whose K/V are written, position order
    hashes: list[int] = field(default_factory=list)  # chain hash of each *full* block, in order
    # LongRoPE: the whole sequence is rotated with the long factors (its prompt is past the original context).
    # Its blocks hash apart from the same tokens computed with the short ones, so neither is reused as the other.
    rope_long: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class BlockStats:
    total: int
    used: int  # referenced by at least one sequence
    shared: int  # referenced by more than one
    cached_free: int  # unreferenced but holding a reusable prefix
    free: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        assert num_blocks > 0 and block_size > 0
        self.num_blocks, self.block_size = num_blocks, block_size
        self.ref_count = [0] * num_blocks
        self.free: deque[int] = deque(range(num_blocks))
        self.cached: OrderedDict[int, None] = OrderedDict()  # LRU order: oldest first
        self.hash_of: dict[int, int] = {}  # block -> hash of its content (full blocks only)
        # Bumped by forget_prefixes and part of every chain hash: a request still running across a model
        # change fills blocks with K/V of both models, and their hashes must never match a later chain.
        self.epoch = 0
        self.block_of: dict[int, int] = {}  # hash -> block holding it

    # -- accounting ---------------------------------------------------------------------------
    def stats(self) -> BlockStats:
        used = sum(1 for r in self.ref_count if r > 0)
        shared = sum(1 for r in self.ref_count if r > 1)
        return BlockStats(self.num_blocks, used, shared, len(self.cached), len(self.free))

    @property
    def num_available(self) -> int:
        return len(self.free) + len(self.cached)

    def blocks_needed(self, table: BlockTable, n: int) -> int:
        """Fresh blocks that appending n tokens to `table` would take (copy-on-write included)."""
        size, have = self.block_size, table.num_tokens
        needed = -(-(have + n) // size) - len(table.block_ids)
        if have % size and self.ref_count[table.block_ids[-1]] > 1:
            needed += 1  # the shared partial block gets copied before it is written
        return max(needed, 0)

    # -- allocation ---------------------------------------------------------------------------
    def _take_block(self) -> int:
        if self.free:
            block = self.free.popleft()
        elif self.cached:
            block, _ = self.cached.popitem(last=False)  # evict the least recently used prefix
            del self.block_of[self.hash_of.pop(block)]
        else:
            raise OutOfKVBlocks("out of KV cache blocks")
        self.ref_count[block] = 1
        return block

    def _release_block(self, block: int) -> None:
        self.ref_count[block] -= 1
        assert self.ref_count[block] >= 0, f"block {block} released twice"
        if self.ref_count[block] == 0:
            if block in self.hash_of:
                self.cached[block] = None  # keep its content for a later prefix hit
            else:
                self.free.append(block)

    def _chain_hash(self, parent: int | None, tokens) -> int:
        return hash((self.epoch, parent, tuple(tokens)))

    def match_prefix(self, prompt: list[int], rope_long: bool = False) -> BlockTable:
        """A table holding the longest cached prefix of `prompt` (whole blocks, shared).

        At least the last prompt token is always left to compute: its logits start generation.
        """
        table, size = BlockTable(rope_long=rope_long), self.block_size
        parent = _root(table)
        for start in range(0, len(prompt) - 1 - (len(prompt) - 1) % size, size):
            h = self._chain_hash(parent, prompt[start:start + size])
            block = self.block_of.get(h)
            if block is None:
                break
            if self.ref_count[block] == 0:
                del self.cached[block]
            self.ref_count[block] += 1
            table.block_ids.append(block)
            table.tokens.extend(prompt[start:start + size])
            table.hashes.append(h)
            parent = h
        return table

    def append(self, table: BlockTable, tokens: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Reserve slots for `tokens` at the end of `table`; all or nothing.

        Returns (slot per token, copy-on-write instructions (src_block, dst_block) that the
        tensor side must execute before writing).
        """
        need = self.blocks_needed(table, len(tokens))
        if need > self.num_available:
            raise OutOfKVBlocks(f"out of KV cache blocks: {need} more needed, {self.num_available} available "
                                f"of {self.num_blocks} (block size {self.block_size})")
        size, copies, slots = self.block_size, [], []
        if table.num_tokens % size and self.ref_count[table.block_ids[-1]] > 1:
            shared = table.block_ids[-1]
            fresh = self._take_block()
            self._release_block(shared)
            table.block_ids[-1] = fresh
            copies.append((shared, fresh))
        for token in tokens:
            pos = table.num_tokens
            if pos % size == 0:
                table.block_ids.append(self._take_block())
            block = table.block_ids[pos // size]
            slots.append(block * size + pos % size)
            table.tokens.append(token)
            if (pos + 1) % size == 0:
                self._register_full(table, block)
        return slots, copies

    def _register_full(self, table: BlockTable, block: int) -> None:
        parent = table.hashes[-1] if table.hashes else _root(table)
        h = self._chain_hash(parent, table.tokens[-self.block_size:])
        table.hashes.append(h)
        if h not in self.block_of and block not in self.hash_of:
            self.block_of[h], self.hash_of[block] = block, h

    # -- lifetime -----------------------------------------------------------------------------
    def fork(self, table: BlockTable, at: int | None = None) -> BlockTable:
        """A new table sharing the first `at` tokens (default: all); shared blocks copy on write."""
        at = table.num_tokens if at is None else at
        assert 0 <= at <= table.num_tokens
        n_blocks = -(-at // self.block_size)
        child = BlockTable(table.block_ids[:n_blocks], table.tokens[:at], table.hashes[:at // self.block_size],
                           table.rope_long)
        for block in child.block_ids:
            self.ref_count[block] += 1
        return child

    def truncate(self, table: BlockTable, length: int) -> None:
        """Roll back to the first `length` tokens, freeing blocks wholly past the end."""
        assert 0 <= length <= table.num_tokens
        keep = -(-length // self.block_size)
        for block in table.block_ids[keep:]:
            self._release_block(block)
        del table.block_ids[keep:], table.tokens[length:], table.hashes[length // self.block_size:]
        if length % self.block_size:
            last = table.block_ids[-1]
            # Its tail will be overwritten: it no longer holds what its hash says (unless shared,
            # in which case the next write copies it first and the original stays valid).
            if self.ref_count[last] == 1 and last in self.hash_of:
                del self.block_of[self.hash_of.pop(last)]

    def release(self, table: BlockTable) -> None:
        for block in table.block_ids:
            self._release_block(block)
        table.block_ids.clear(), table.tokens.clear(), table.hashes.clear()

    def forget_prefixes(self) -> int:
        """Forget every cached prefix (the model changed, so their K/V no longer match): the cached blocks
        nobody holds go back to the free list, and blocks still held keep their content for their owners
        but are never offered to match_prefix again. Returns how many blocks were freed."""
        freed = len(self.cached)
        self.epoch += 1
        self.free.extend(self.cached)
        self.cached.clear()
        self.hash_of.clear()
        self.block_of.clear()
        return freed

    # -- checking -----------------------------------------------------------------------------
    def check_invariants(self, tables: list[BlockTable]) -> None:
        counts = [0] * self.num_blocks
        for t in tables:
            assert len(t.block_ids) == -(-t.num_tokens // self.block_size), "table size mismatch"
            for block in t.block_ids:
                counts[block] += 1
        assert counts == self.ref_count, "reference counts differ from the tables that hold blocks"
        free, cached = set(self.free), set(self.cached)
        assert len(free) == len(self.free) and not free & cached
        for block in range(self.num_blocks):
            in_use = self.ref_count[block] > 0
            assert in_use + (block in free) + (block in cached) == 1, f"block {block} in two states"
        assert all(b in self.hash_of for b in cached), "a cached block without a hash"
        assert all(self.block_of[h] == b for b, h in self.hash_of.items()), "hash index inconsistent"
        assert len(self.block_of) == len(self.hash_of)


def _root(table: BlockTable):
    """What a table's first block hash chains from: its RoPE rule (None: the common one)."""
    return "long rope" if table.rope_long else None
