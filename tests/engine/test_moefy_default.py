"""The MoEfied default model (8 experts, top-2 = E/4, half the neurons shared), built once per
session from the shipped GGUF (a few minutes on 2 cores: slow)."""
from __future__ import annotations

import pytest
import torch

from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.moefy import moefy
from engine.moefy_report import set_top_k
from engine.quality import SHIPPED_TEXT, perplexity
from engine.router_stats import router_stats

pytestmark = pytest.mark.slow
E, TOP_K = 8, 2
EVAL_TOKENS = 1024  # the shipped text's first 1024 tokens, window 512, stride 256
# Measured 2026-12-02 on these tokens (docs/benchmarks.md, "MoEfication"): dense 31.96, top-2 of 8
# with the shared half 69.09. The bound leaves ~15 % for summation-order noise in the k-means and
# the fit, not for a regression (no shared half: ~2300).
PPL_BOUND_TOP2 = 80.0


@pytest.fixture(scope="module")
def built(tmp_path_factory, default_gguf):
    out = tmp_path_factory.mktemp("moe") / "smollm2-moe"
    moefy(default_gguf, out, n_experts=E, top_k=TOP_K)
    dense = load_checkpoint(default_gguf)
    moe = load_checkpoint(out)
    ids = dense.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"))[:EVAL_TOKENS]
    return (Decoder.from_tensors(dense.config, dense.tensors), Decoder.from_tensors(moe.config, moe.tensors),
            dense.tokenizer, ids)


def test_all_experts_give_the_dense_logits(built):
    dense, moe, tokenizer, _ = built
    prompt = tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    set_top_k(moe, E)
    try:
        a = dense(torch.tensor([prompt]), ContiguousKVCache(dense.config, len(prompt)).view(0, len(prompt)))
        b = moe(torch.tensor([prompt]), ContiguousKVCache(moe.config, len(prompt)).view(0, len(prompt)))
    finally:
        set_top_k(moe, TOP_K)
    assert (a - b).abs().max().item() <= 1e-4


def test_top_2_of_8_perplexity_stays_below_the_recorded_bound(built):
    _, moe, _, ids = built
    assert perplexity(moe, ids, 512, 256).perplexity < PPL_BOUND_TOP2


def test_every_expert_gets_tokens_and_routing_does_not_collapse(built):
    _, moe, _, ids = built
    stats = router_stats(moe, ids)
    assert len(stats) == 30
    for s in stats:
        assert min(s.token_fraction) > 0.005, f"layer {s.layer}: an expert is (nearly) never chosen"  # measured >= 0.0186
        assert s.balance < 1.5, f"layer {s.layer}: N·Σf·P = {s.balance:.2f} (8 = every token to one expert)"
