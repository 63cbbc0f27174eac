"""Quantization quality (engine/instrumentation/quality.py): the sliding window scores every token once,
perplexity equals a direct cross-entropy, KL / top-1 agreement behave, the CLI prints them, and
the default model keeps its perplexity under int8 (1%) and int4-g32 (5%)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine.cli import main as cli_main
from engine.engine import Engine
from engine.records import LoadOptions
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.instrumentation.quality import SHIPPED_TEXT, _windows, compare, perplexity
from engine.quant import dequantized_tensors, quantize_model


@pytest.mark.parametrize("n,window,stride", [(2, 2, 1), (10, 4, 2), (100, 16, 5), (37, 64, 32), (64, 8, 7)])
def test_windows_score_every_token_once_with_enough_context(n, window, stride):
    scored = []
    for start, end, first in _windows(n, window, stride):
        assert end - start <= window and start < first <= end
        if first > window - stride:  # after the first window every token sees window - stride of context
            assert first - start >= window - stride
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_windows_reject_nonsense():
    with pytest.raises(ValueError):
        list(_windows(10, 1, 1))
    with pytest.raises(ValueError):
        list(_windows(10, 4, 4))  # no overlap: a window's first target would have no context


@pytest.fixture
def tiny(hf_checkpoint):
    path, _ = hf_checkpoint("llama")
    ckpt = load_checkpoint(path)
    return path, ckpt, Decoder.from_tensors(ckpt.config, ckpt.tensors)


def test_perplexity_is_the_exponent_of_the_mean_cross_entropy(tiny):
    _, ckpt, model = tiny
    ids = torch.randint(0, ckpt.config.vocab_size, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    logits = model(torch.tensor([ids]), ContiguousKVCache(ckpt.config, 40).view(0, 40))[0]
    nll = F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:])).item()
    whole = perplexity(model, ids, window=64, stride=32)
    assert whole.tokens_scored == 39
    assert math.isclose(whole.perplexity, math.exp(nll), rel_tol=1e-5)
    sliding = perplexity(model, ids, window=16, stride=4)  # less context per token: different, finite
    assert sliding.tokens_scored == 39 and math.isfinite(sliding.perplexity)


def test_compare_is_zero_against_itself_and_positive_against_a_quantization(tiny):
    _, ckpt, model = tiny
    ids = torch.randint(0, ckpt.config.vocab_size, (30,), generator=torch.Generator().manual_seed(4)).tolist()
    same = compare(model, model, ids, window=16, stride=8)
    assert len(same.kl) == len(same.top1_agree) == 29
    assert same.mean_kl < 1e-6 and same.agreement == 1.0
    quantized = quantize_model(Decoder.from_tensors(ckpt.config, ckpt.tensors), "int4-g32", exact=True)
    diff = compare(model, quantized, ids, window=16, stride=8)
    assert len(diff.kl) == 29 and 0 < diff.mean_kl < 1.0
    assert all(k >= 0 for k in diff.kl)


def test_engine_quant_diff_uses_the_float_checkpoint(tiny):
    path, ckpt, _ = tiny
    engine = Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant="int8", quant_exact=True))
    ids = list(range(1, 25))
    diff = engine.quant_diff(ids)
    assert len(diff.kl) == 23 and diff.mean_kl > 0 and 0 <= diff.agreement <= 1
    plain = Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant="none"))
    assert plain.quant_diff(ids).mean_kl < 1e-6  # nothing quantized, nothing changed


def test_cli_perplexity_prints_one_json_row_per_quantization(tiny, tmp_path, capsys):
    path, _, _ = tiny
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 20)
    rc = cli_main(["perplexity", "--model", str(path), "--text", str(text), "--quant", "none,int8", "--kl",
                   "--json", "--window", "32", "--stride", "16", "--threads", "1"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["quant"] for r in rows] == ["none", "int8"]
    assert rows[0]["mean_kl"] < 1e-6 and rows[1]["mean_kl"] > 0
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"]


@pytest.mark.slow
def test_default_model_perplexity_survives_quantization(default_gguf):
    """The issue's bounds on the first 1,024 tokens of the shipped text (full-text figures with the
    kernels users run are in docs/benchmarks.md). Each quantization runs as a float model holding
    its dequantized weights: test_quant shows the exact quantized path equals that (<= 1e-4), and
    fp32 matmuls keep this test fast on a CPU without fast int kernels for fp32 activations."""
    ckpt = load_checkpoint(default_gguf)
    assert ckpt.config.tie_embeddings and "lm_head.weight" not in ckpt.tensors
    ids = ckpt.tokenizer.encode(SHIPPED_TEXT.read_text(encoding="utf-8"), add_special_tokens=True)[:1024]
    results = {}
    for mode in ("none", "int8", "int4-g32"):
        tensors = dequantized_tensors(ckpt.tensors, mode)
        results[mode] = perplexity(Decoder.from_tensors(ckpt.config, tensors), ids, window=512, stride=256).perplexity
    assert 5 < results["none"] < 60, results  # a real model on real English
    assert abs(results["int8"] / results["none"] - 1) <= 0.01, results
    assert abs(results["int4-g32"] / results["none"] - 1) <= 0.05, results
