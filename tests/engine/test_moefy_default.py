"""The MoEfied default model as the recipe builds it (8 experts, top-2 = E/4, three quarters of each
MLP shared, the first layer dense, routers fit on the shipped prose and chat transcripts), built
once per session from the shipped GGUF (under a minute on a quiet 2-core machine: slow)."""
from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from engine.engine import Engine
from engine.records import LoadOptions
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.moefy.build import moefy
from engine.moefy.report import set_top_k
from engine.instrumentation.quality import SHIPPED_TEXT, perplexity
from engine.records import GenerationDone, SamplingParams
from engine.moefy.router_stats import router_stats

pytestmark = pytest.mark.slow
E, TOP_K = 8, 2
EVAL_TOKENS = 1024  # the shipped text's first 1024 tokens, window 512, stride 256
# Measured 2026-12-02 on these tokens (docs/benchmarks.md, "MoEfication"): dense 31.96, top-2 of 8
# 38.60. The bound leaves ~15 % for summation-order noise in the k-means and the fit, not for a
# regression (the earlier recipe, a shared half with every layer split: 69).
PPL_BOUND_TOP2 = 45.0
# The default chat prompts (tests/engine/test_default_model.py); none is in the routers' fit text.
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Give me three tips for staying healthy.",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, default_gguf):
    out = tmp_path_factory.mktemp("moe") / "smollm2-moe"
    moefy(default_gguf, out, n_experts=E, top_k=TOP_K)
    dense = load_checkpoint(default_gguf)
    moe = load_checkpoint(out)
    ids = dense.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"))[:EVAL_TOKENS]
    return (Decoder.from_tensors(dense.config, dense.tensors), Decoder.from_tensors(moe.config, moe.tensors),
            dense.tokenizer, ids, out)


def test_all_experts_give_the_dense_logits(built):
    dense, moe, tokenizer, _, _ = built
    prompt = tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    set_top_k(moe, E)
    try:
        a = dense(torch.tensor([prompt]), ContiguousKVCache(dense.config, len(prompt)).view(0, len(prompt)))
        b = moe(torch.tensor([prompt]), ContiguousKVCache(moe.config, len(prompt)).view(0, len(prompt)))
    finally:
        set_top_k(moe, TOP_K)
    assert (a - b).abs().max().item() <= 1e-4


def test_top_2_of_8_perplexity_stays_below_the_recorded_bound(built):
    _, moe, _, ids, _ = built
    assert perplexity(moe, ids, 512, 256).perplexity < PPL_BOUND_TOP2


def test_every_expert_gets_tokens_and_routing_does_not_collapse(built):
    _, moe, _, ids, _ = built
    stats = router_stats(moe, ids)
    assert [s.layer for s in stats] == list(range(1, 30))  # layer 0 keeps its dense MLP
    for s in stats:
        assert min(s.token_fraction) > 0.005, f"layer {s.layer}: an expert is (nearly) never chosen"  # measured >= 0.0308
        assert s.balance < 1.5, f"layer {s.layer}: N·Σf·P = {s.balance:.2f} (8 = every token to one expert)"


def test_top_2_of_8_answers_the_default_chat_prompts_in_sentences(built):
    """Greedy answers through the app's engine at the checkpoint's own top-2. The failure this
    guards against is what weaker recipes produced: loops ("a state of a state of a state ...",
    "1. 1. 1. ...") and wrong facts about the one thing the prompt asks."""
    engine = Engine.load(built[4], LoadOptions(device="cpu", dtype="float32", quant="none"))
    answers = []
    for question in CHAT_PROMPTS:
        prompt = engine.chat_prompt_ids([{"role": "user", "content": question}])
        done = [x for x in engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=48))
                if isinstance(x, GenerationDone)][0]
        answers.append(engine.tokenizer.decode(list(done.token_ids)))
    assert "Paris" in answers[0], answers[0]
    assert "def " in answers[1] and "return" in answers[1], answers[1]
    for answer in answers:
        words = re.findall(r"\w+", answer)
        trigrams = Counter(zip(words, words[1:], words[2:]))
        assert len(words) >= 4, answer  # the dense model says "The capital of France is Paris."
        assert max(trigrams.values(), default=0) <= 3, f"a loop: {answer!r}"
