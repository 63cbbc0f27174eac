"""MoEfication on a tiny random llama: the split is a partition into equal experts, top-k = E gives
the dense model's logits, transformers reads the written Qwen2-MoE checkpoint and agrees with us,
and the fitted routers spread tokens over every expert."""
from __future__ import annotations

import json

import pytest
import torch

from engine.loaders import load_checkpoint
from engine.loaders.safetensors_dir import load_hf_dir
from engine.kv_cache import ContiguousKVCache
from engine.model import Decoder
from engine.moefy import build as moefy
from engine.moefy.router_stats import router_stats
from tests.engine.test_parity_hf import run_both

E = 4  # the tiny llama's MLP is 96 wide: 4 experts of 24 neurons
TOL = 1e-4


def fit_ids(vocab: int, n: int = 384, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


@pytest.fixture
def dense(hf_checkpoint):
    directory, _ = hf_checkpoint("llama", intermediate_size=96)
    return load_checkpoint(directory)


SHARED = 1 / 6  # 16 of the 96 neurons always on, 4 routed experts of 20 (transformers' grouped
# expert matmuls want rows of a multiple of 16 bytes)


def build(dense, out, top_k: int, shared_fraction: float = SHARED, dense_layers: int = 0) -> dict:
    return moefy.build(dense, fit_ids(dense.config.vocab_size), out, n_experts=E, top_k=top_k, max_tokens=384,
                       shared_fraction=shared_fraction, dense_layers=dense_layers)


def logits(model, tokens: list[int]) -> torch.Tensor:
    cache = ContiguousKVCache(model.config, len(tokens))
    return model(torch.tensor([tokens]), cache.view(0, len(tokens)))


def test_balanced_kmeans_is_an_equal_partition():
    features = torch.randn(96, 10, generator=torch.Generator().manual_seed(1))
    groups = moefy.balanced_kmeans(features, 4)
    assert groups.shape == (4, 24)
    assert sorted(groups.flatten().tolist()) == list(range(96))


def test_split_experts_sum_to_the_dense_mlp(dense):
    """The algebra moefy relies on: the experts' outputs add up to the dense MLP's output."""
    p = "layers.0.mlp."
    g, u, d = (dense.tensors[p + n + ".weight"] for n in ("w_gate", "w_up", "w_down"))
    h = torch.randn(7, g.shape[1])
    neurons = moefy.balanced_kmeans(torch.randn(g.shape[0], 5), E)
    ex = moefy.expert_tensors(dense.tensors, 0, neurons)
    parts = sum((torch.nn.functional.silu(h @ ex[p + "w_gate"][e].T) * (h @ ex[p + "w_up"][e].T)) @ ex[p + "w_down"][e].T
                for e in range(E))
    whole = (torch.nn.functional.silu(h @ g.T) * (h @ u.T)) @ d.T
    assert torch.allclose(parts, whole, atol=1e-5)


@pytest.mark.parametrize("shared_fraction,dense_layers", [(0.0, 0), (SHARED, 0), (SHARED, 1)])
def test_top_k_equal_to_experts_reproduces_the_dense_model(dense, tmp_path, shared_fraction, dense_layers):
    report = build(dense, tmp_path / "moe", top_k=E, shared_fraction=shared_fraction, dense_layers=dense_layers)
    config, tensors, _ = load_hf_dir(tmp_path / "moe")
    assert config.moe_layers == tuple(i >= dense_layers for i in range(config.n_layers)) and report["dense_layers"] == dense_layers
    assert config.moe.shared_expert_hidden_dim == report["shared_neurons"] == round(96 * shared_fraction)
    assert config.arch == "qwen2_moe" and config.moe.n_experts == E and config.moe.n_experts_per_tok == E
    assert config.moe.router_scale == report["router_scale"] < 1e-3
    tokens = fit_ids(dense.config.vocab_size, 48, seed=5)
    ours_dense = logits(Decoder.from_tensors(dense.config, dense.tensors), tokens)
    ours_moe = logits(Decoder.from_tensors(config, tensors), tokens)
    assert (ours_dense - ours_moe).abs().max().item() <= TOL


@pytest.mark.parametrize("top_k,shared_fraction,dense_layers", [(E, SHARED, 0), (2, SHARED, 0), (1, 0.0, 0), (2, SHARED, 1)])
def test_transformers_reads_the_checkpoint_and_agrees(dense, tmp_path, top_k, shared_fraction, dense_layers):
    from transformers import AutoModelForCausalLM

    build(dense, tmp_path / "moe", top_k=top_k, shared_fraction=shared_fraction, dense_layers=dense_layers)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2MoeForCausalLM"
    assert run_both(tmp_path / "moe", hf) <= TOL


def test_routing_uses_every_expert_and_differs_between_tokens(dense, tmp_path):
    report = build(dense, tmp_path / "moe", top_k=2)
    recall = report["router_top_k_recall"]
    assert len(recall) == dense.config.n_layers and all(0.0 < r <= 1.0 for r in recall)  # one per split layer
    config, tensors, _ = load_hf_dir(tmp_path / "moe")
    stats = router_stats(Decoder.from_tensors(config, tensors), fit_ids(config.vocab_size, 256, seed=9), window=128)
    assert [s.layer for s in stats] == list(range(config.n_layers))
    for s in stats:
        assert s.tokens == 256 and abs(sum(s.token_fraction) - 1) < 1e-9 and abs(sum(s.mean_prob) - 1) < 1e-6
        assert min(s.token_fraction) > 0, f"layer {s.layer}: an expert got no tokens"
        # 1.0 = balanced (slightly below when f and P anti-correlate); N = 4 would be a collapse
        assert 0.9 <= s.balance < 1.5, f"layer {s.layer}: balance {s.balance}"


def test_written_checkpoint_is_complete(dense, tmp_path):
    build(dense, tmp_path / "moe", top_k=2)
    names = {p.name for p in (tmp_path / "moe").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "moefy.json"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    hf = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert hf["norm_topk_prob"] is False and hf["num_experts"] == E and hf["model_type"] == "qwen2_moe"
    assert load_checkpoint(tmp_path / "moe").tokenizer.encode("t3 t5") == [3, 5]


def test_moefy_refuses_a_width_that_does_not_split(dense, tmp_path):
    with pytest.raises(ValueError, match="equal experts"):
        moefy.build(dense, fit_ids(dense.config.vocab_size), tmp_path / "x", n_experts=5, top_k=2)


def test_a_decode_step_runs_only_the_chosen_experts(dense, tmp_path, monkeypatch):
    """Work proportional to k: one token at top-k touches k experts per layer, whatever E is."""
    from engine.layers.moe import SparseMoE

    build(dense, tmp_path / "moe", top_k=1)
    config, tensors, _ = load_hf_dir(tmp_path / "moe")
    model = Decoder.from_tensors(config, tensors)
    calls = []
    original = SparseMoE.expert_mlp
    monkeypatch.setattr(SparseMoE, "expert_mlp", lambda self, e, h: calls.append((e, len(h))) or original(self, e, h))
    from engine.moefy.report import set_top_k
    for k in (1, 2, E):
        set_top_k(model, k)
        calls.clear()
        cache = ContiguousKVCache(config, 1)
        model(torch.tensor([[7]]), cache.view(0, 1))
        assert len(calls) == k * config.n_layers and all(n == 1 for _, n in calls)
