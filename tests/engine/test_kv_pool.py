"""The paged K/V pool against plain recomputation: reading K/V through scattered blocks must give
the same logits as running the whole sequence again with no cache at all."""
import pytest
import torch

from engine.config import ModelConfig
from engine.kv_cache import ContiguousKVCache
from engine.runtime.kv_pool import KVPool, blocks_for_budget, kv_bytes_per_token
from engine.model import Decoder
from tests.tiny_models import build_hf_model

BLOCK = 4


def tiny_decoder(arch: str) -> Decoder:
    from engine.loaders.safetensors_dir import hf_state_to_canonical

    hf = build_hf_model(arch, num_hidden_layers=2)
    config = ModelConfig.from_hf(hf.config.to_dict())
    return Decoder.from_tensors(config, hf_state_to_canonical(hf.state_dict(), config))


def recompute_last_logits(model, tokens: list[int]) -> torch.Tensor:
    cache = ContiguousKVCache(model.config, len(tokens))
    return model(torch.tensor([tokens]), cache.view(0, len(tokens)))[0, -1]


class ScatteredSequence:
    """A sequence whose blocks come from a shuffled free list, so neighbours are never adjacent."""

    def __init__(self, pool: KVPool, free: list[int]):
        self.pool, self.free, self.table, self.length = pool, free, [], 0

    def step(self, model, new_tokens: list[int]) -> torch.Tensor:
        T = len(new_tokens)
        while len(self.table) * BLOCK < self.length + T:
            self.table.append(self.free.pop())
        positions = list(range(self.length, self.length + T))
        slots = [self.table[p // BLOCK] * BLOCK + p % BLOCK for p in positions]
        self.length += T
        view = self.pool.view([positions], slots, [self.table], [self.length])
        return model(torch.tensor([new_tokens]), view)[0, -1]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3_moe", "mistral"])
def test_paged_decode_matches_recompute(arch):
    model = tiny_decoder(arch)
    pool = KVPool(model.config, num_blocks=80, block_size=BLOCK)
    g = torch.Generator().manual_seed(0)
    free = torch.randperm(80, generator=g).tolist()
    tokens = torch.randint(0, model.config.vocab_size, (230,), generator=g).tolist()
    seq = ScatteredSequence(pool, free)
    seq.step(model, tokens[:30])
    worst = 0.0
    for i in range(30, 230):
        logits = seq.step(model, [tokens[i]])
        worst = max(worst, (logits - recompute_last_logits(model, tokens[:i + 1])).abs().max().item())
    assert worst <= 1e-4


def test_chunked_prefill_equals_one_shot():
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    pool = KVPool(model.config, num_blocks=40, block_size=BLOCK)
    seq = ScatteredSequence(pool, list(range(40)))
    for start in range(0, 50, 7):  # chunks that straddle block boundaries
        logits = seq.step(model, tokens[start:start + 7])
    assert (logits - recompute_last_logits(model, tokens)).abs().max().item() <= 1e-4


def test_batched_decode_of_different_lengths():
    """Two sequences of different lengths decoded in one batch equal each decoded alone."""
    model = tiny_decoder("qwen2")
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 128, (23,), generator=g).tolist()
    b = torch.randint(0, 128, (9,), generator=g).tolist()
    pool = KVPool(model.config, num_blocks=40, block_size=BLOCK)
    free = list(range(40))
    sa, sb = ScatteredSequence(pool, free), ScatteredSequence(pool, free)
    sa.step(model, a[:-1])
    sb.step(model, b[:-1])
    for s in (sa, sb):
        while len(s.table) * BLOCK < s.length + 1:
            s.table.append(free.pop())
    width = max(len(sa.table), len(sb.table))
    tables = [s.table + [0] * (width - len(s.table)) for s in (sa, sb)]
    positions = [[sa.length], [sb.length]]
    slots = [s.table[s.length // BLOCK] * BLOCK + s.length % BLOCK for s in (sa, sb)]
    view = pool.view(positions, slots, tables, [sa.length + 1, sb.length + 1])
    logits = model(torch.tensor([[a[-1]], [b[-1]]]), view)[:, -1]
    assert (logits[0] - recompute_last_logits(model, a)).abs().max().item() <= 1e-4
    assert (logits[1] - recompute_last_logits(model, b)).abs().max().item() <= 1e-4


def test_copy_blocks_and_budget():
    config = tiny_decoder("llama").config
    per_token = kv_bytes_per_token(config, torch.float32)
    assert per_token == 2 * config.n_layers * config.n_kv_heads * config.head_dim * 4
    assert blocks_for_budget(config, BLOCK, per_token * BLOCK * 10, torch.float32) == 10
    pool = KVPool(config, 4, BLOCK)
    pool.k[:, 0:BLOCK] = 1.0
    pool.copy_blocks([(0, 3)])
    assert torch.all(pool.k[:, 3 * BLOCK:4 * BLOCK] == 1.0) and torch.all(pool.k[:, BLOCK:3 * BLOCK] == 0.0)


def test_gathered_kv_equals_indexing_and_reuses_one_buffer():
    """Every layer's K/V are gathered into one shared buffer pair (no context-sized allocations per layer
    and step): the numbers equal plain indexing, and the buffer grows by doubling, not per step."""
    config = ModelConfig(arch="llama", vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                         hidden_dim=64)
    pool = KVPool(config, num_blocks=8, block_size=4)
    pool.k.normal_()
    pool.v.normal_()
    buffers = set()
    for blocks in ([3], [3, 5], [3, 5, 1], [3, 5, 1, 6]):
        slots = torch.tensor([[b * 4 + i for b in blocks for i in range(4)]])
        for layer in range(config.n_layers):
            k, v = pool.gather(layer, slots)
            assert torch.equal(k, pool.k[layer][slots]) and torch.equal(v, pool.v[layer][slots])
        buffers.add(pool._gather[0].data_ptr())
    assert len(buffers) <= 3  # 4, 8 then 16 rows: grown twice for four context lengths
