"""The logit lens by replay (engine/instrumentation/lens.py): its last layer is the model's own logits
(dense, MoE, quantized), chunking changes nothing, cancellation stops it."""
import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.records import LoadOptions

CONTEXT = [3, 9, 4, 3, 9, 4, 11, 5, 17, 2, 8, 30, 41, 7, 19, 23, 60, 5, 12, 99]


def model_probs(model, ids: list[int]) -> torch.Tensor:
    """The model's own next-token probabilities at every position, one plain forward: [T, V]."""
    weight = model.embed.weight
    cache = ContiguousKVCache(model.config, len(ids), device=weight.device, dtype=weight.dtype)
    return torch.softmax(model(torch.tensor([ids]), cache.view(0, len(ids)))[0], dim=-1)


@pytest.mark.parametrize("arch,quant", [("llama", "none"), ("qwen3", "none"), ("mistral", "none"),
                                        ("qwen2_moe", "none"), ("olmoe", "none"), ("llama", "int8")])
def test_last_layer_of_the_lens_is_the_models_own_prediction(hf_checkpoint, arch, quant):
    directory, _ = hf_checkpoint(arch)
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32", quant=quant))
    columns, top_n = 6, 5
    view = engine.logit_lens(CONTEXT, target_id=77, columns=columns, top_n=top_n)
    L = engine.config.n_layers
    assert view.top_ids.shape == (L, columns, top_n) and view.next_probs.shape == (L, columns)
    assert view.positions == tuple(range(len(CONTEXT) - columns, len(CONTEXT)))
    assert view.next_ids == tuple(CONTEXT[len(CONTEXT) - columns + 1:]) + (77,)
    probs = model_probs(engine.model, CONTEXT)[-columns:]  # [P, V]
    values, ids = torch.topk(probs, top_n, dim=-1)
    np.testing.assert_allclose(view.top_probs[-1], values.numpy(), atol=1e-5, rtol=0)
    assert (view.top_ids[-1] == ids.numpy()).all()
    expected_next = probs[torch.arange(columns), torch.tensor(view.next_ids)].numpy()
    np.testing.assert_allclose(view.next_probs[-1], expected_next, atol=1e-5, rtol=0)
    assert set(view.texts) >= set(view.top_ids.flatten().tolist()) | set(view.next_ids)
    assert view.input_texts == engine.token_texts(CONTEXT[-columns:])
    assert (np.diff(view.top_probs, axis=-1) <= 0).all()  # each cell's top-N most likely first


def test_tied_embeddings_read_through_the_embedding(hf_checkpoint):
    directory, _ = hf_checkpoint("llama", tie_word_embeddings=True)
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    assert engine.model.lm_head is None
    view = engine.logit_lens(CONTEXT, target_id=1, columns=3, top_n=4)
    probs = model_probs(engine.model, CONTEXT)[-3:]
    np.testing.assert_allclose(view.top_probs[-1], torch.topk(probs, 4).values.numpy(), atol=1e-5, rtol=0)


def test_lens_in_chunks_equals_one_chunk(hf_checkpoint, monkeypatch):
    from engine.instrumentation import lens

    directory, _ = hf_checkpoint("mistral")  # sliding window 8: chunks cross the window
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    ids = torch.randint(0, 128, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    whole = engine.logit_lens(ids, 5, columns=20, top_n=3)
    monkeypatch.setattr(lens, "LENS_CHUNK", 7)
    chunked = engine.logit_lens(ids, 5, columns=20, top_n=3)
    np.testing.assert_allclose(chunked.top_probs, whole.top_probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked.next_probs, whole.next_probs, atol=1e-5, rtol=0)


def test_more_columns_than_tokens_shows_every_position(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    view = engine.logit_lens([5, 6, 7], 8, columns=8, top_n=2)
    assert view.positions == (0, 1, 2) and view.next_ids == (6, 7, 8)
    with pytest.raises(ValueError):
        engine.logit_lens([], 8)


def test_cancelled_lens_returns_none(hf_checkpoint, monkeypatch):
    from engine.instrumentation import lens

    directory, _ = hf_checkpoint("llama")
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    assert engine.logit_lens(CONTEXT, 1, cancelled=lambda: True) is None
    monkeypatch.setattr(lens, "LENS_CHUNK", 4)
    calls = []
    def cancel_after_two():  # checked between chunks: stops mid-replay
        calls.append(1)
        return len(calls) > 2
    assert engine.logit_lens(CONTEXT, 1, cancelled=cancel_after_two) is None
    assert len(calls) == 3
