"""Paged KV bookkeeping: prefix reuse, LRU eviction, copy-on-write, rollback, all-or-nothing
allocation, and a property test that random operation sequences leak nothing."""
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.runtime.block_manager import BlockManager, BlockTable, OutOfKVBlocks


def new_sequence(bm: BlockManager, prompt):
    table = bm.match_prefix(prompt)
    cached = table.num_tokens
    bm.append(table, prompt[cached:])
    return table, cached


def test_prefix_blocks_are_shared_and_the_last_token_is_always_computed():
    bm = BlockManager(16, 4)
    prompt = list(range(10))
    a, cached_a = new_sequence(bm, prompt)
    assert cached_a == 0 and bm.stats().used == 3
    b, cached_b = new_sequence(bm, prompt + [99, 98])
    assert cached_b == 8 and b.block_ids[:2] == a.block_ids[:2]
    assert bm.stats().shared == 2
    c, cached_c = new_sequence(bm, list(range(8)))  # exactly two blocks: the last token is recomputed
    assert cached_c == 4
    bm.check_invariants([a, b, c])


def test_released_prefixes_stay_cached_and_are_evicted_lru():
    bm = BlockManager(4, 2)
    a, _ = new_sequence(bm, [1, 2, 3, 4, 5])  # 3 blocks, two full ones hashed
    bm.release(a)
    s = bm.stats()
    assert s.cached_free == 2 and s.free == 2 and s.used == 0
    b, cached = new_sequence(bm, [1, 2, 3, 4, 7])
    assert cached == 4  # served from the cache
    bm.release(b)
    c, _ = new_sequence(bm, [9, 9, 9, 9, 9, 9, 9])  # needs 4 blocks: evicts the cached ones, oldest first
    assert bm.stats().cached_free == 0
    d = bm.match_prefix([1, 2, 3, 4, 7])
    assert d.num_tokens == 0  # the prefix was evicted
    bm.check_invariants([c, d])


def test_fork_copies_a_shared_block_on_first_write_by_either_branch():
    bm = BlockManager(8, 4)
    parent, _ = new_sequence(bm, [1, 2, 3, 4, 5, 6])
    child = bm.fork(parent)
    assert child.block_ids == parent.block_ids and bm.stats().shared == 2
    slots, copies = bm.append(child, [7])
    assert copies == [(parent.block_ids[1], child.block_ids[1])] and child.block_ids[1] != parent.block_ids[1]
    assert slots == [child.block_ids[1] * 4 + 2]
    slots, copies = bm.append(parent, [8])
    assert copies == [] and slots == [parent.block_ids[1] * 4 + 2]  # no longer shared: written in place
    early = bm.fork(parent, at=2)
    assert early.tokens == [1, 2] and len(early.block_ids) == 1
    bm.check_invariants([parent, child, early])


def test_truncate_frees_whole_blocks_and_forgets_rewritten_prefixes():
    bm = BlockManager(8, 4)
    t, _ = new_sequence(bm, list(range(11)))
    bm.truncate(t, 5)
    assert len(t.block_ids) == 2 and bm.stats().used == 2 and t.tokens == [0, 1, 2, 3, 4]
    bm.truncate(t, 2)  # the first block becomes partial: its hash no longer describes it
    assert bm.match_prefix(list(range(9))).num_tokens == 0
    bm.check_invariants([t])


def test_out_of_blocks_is_all_or_nothing_with_a_clear_message():
    bm = BlockManager(3, 4)
    t, _ = new_sequence(bm, list(range(10)))
    before = (list(t.block_ids), list(t.tokens), bm.stats())
    with pytest.raises(OutOfKVBlocks, match="out of KV cache blocks: 1 more needed, 0 available of 3"):
        bm.append(t, [1, 2, 3])
    assert (t.block_ids, t.tokens, bm.stats()) == before


class BlockMachine(RuleBasedStateMachine):
    """Random submit / step / fork / rollback / cancel / finish on a small pool."""

    def __init__(self):
        super().__init__()
        self.bm = BlockManager(24, 4)
        self.tables: list[BlockTable] = []

    @rule(prefix=st.integers(0, 2), extra=st.lists(st.integers(0, 5), min_size=1, max_size=12))
    def submit(self, prefix, extra):
        prompt = [7, 7, 7, 7, 1, 2, 3, 4][: prefix * 4] + extra
        table = self.bm.match_prefix(prompt)
        try:
            self.bm.append(table, prompt[table.num_tokens:])
            self.tables.append(table)
        except OutOfKVBlocks:
            self.bm.release(table)  # the scheduler gives back the prefix it had claimed

    @precondition(lambda self: self.tables)
    @rule(i=st.integers(0, 100), n=st.integers(1, 6))
    def step(self, i, n):
        try:
            self.bm.append(self.tables[i % len(self.tables)], [5] * n)
        except OutOfKVBlocks:
            pass

    @precondition(lambda self: self.tables)
    @rule(i=st.integers(0, 100), frac=st.floats(0, 1))
    def fork(self, i, frac):
        parent = self.tables[i % len(self.tables)]
        self.tables.append(self.bm.fork(parent, int(parent.num_tokens * frac)))

    @precondition(lambda self: self.tables)
    @rule(i=st.integers(0, 100), n=st.integers(0, 10))
    def rollback(self, i, n):
        t = self.tables[i % len(self.tables)]
        self.bm.truncate(t, max(t.num_tokens - n, 0))

    @precondition(lambda self: self.tables)
    @rule(i=st.integers(0, 100))
    def cancel_or_finish(self, i):
        self.bm.release(self.tables.pop(i % len(self.tables)))

    @invariant()
    def consistent(self):
        self.bm.check_invariants(self.tables)

    def teardown(self):
        for t in self.tables:
            self.bm.release(t)
        self.bm.check_invariants([])
        assert all(r == 0 for r in self.bm.ref_count)
        s = self.bm.stats()
        assert s.used == 0 and s.free + s.cached_free == s.total


BlockMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
test_random_operations_leak_nothing = BlockMachine.TestCase
