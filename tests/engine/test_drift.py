"""Quantization drift (engine/instrumentation/drift.py): per position the same KL and top-1 agreement as
Engine.quant_diff, both models' top-N equal to softmax-topk of their own logits, cancellable, the float
reference's memory stated, released and loaded again; a float model says there is nothing to drift."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.loaders import load_checkpoint
from engine.model import Decoder
from engine.records import LoadOptions


@pytest.fixture
def tiny(hf_checkpoint):
    path, _ = hf_checkpoint("llama")  # max_position_embeddings 256: 300 ids take two windows
    return path


def _load(path, quant: str) -> Engine:
    return Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant=quant, quant_exact=True))


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 127, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("quant", ["int8", "int4-g32"])
def test_drift_equals_quant_diff_over_several_windows(tiny, quant):
    engine = _load(tiny, quant)
    ids = _ids(300, 1)
    view = engine.quant_drift(ids, top_n=5)
    diff = engine.quant_diff(ids)
    assert len(view.kl) == len(view.top1_agree) == 299 and view.start == 0
    assert view.kl == diff.kl and view.top1_agree == diff.top1_agree  # one computation, one arithmetic path
    assert view.mean_kl == pytest.approx(diff.mean_kl) and view.agreement == pytest.approx(diff.agreement)
    assert view.mean_kl > 0
    assert view.float_top_ids.shape == view.quant_top_ids.shape == view.float_top_probs.shape == (299, 5)
    assert view.next_texts == engine.token_texts(ids[1:])
    shown = set(view.float_top_ids.ravel().tolist()) | set(view.quant_top_ids.ravel().tolist()) | set(ids[1:])
    assert shown <= set(view.texts) and all(view.texts[t] == engine.tokenizer.token_text(t) for t in shown)
    assert quant.split("-")[0] in view.quantization and view.quantization == engine.facts().weights
    # top-1 agreement is the first column of both top-N tables
    assert view.top1_agree == tuple(bool(a) for a in view.float_top_ids[:, 0] == view.quant_top_ids[:, 0])


def test_top_n_equal_softmax_topk_of_each_models_logits(tiny):
    engine = _load(tiny, "int8")
    ids = _ids(40, 2)
    view = engine.quant_drift(ids, top_n=4)
    ckpt = load_checkpoint(tiny)
    float_model = Decoder.from_tensors(ckpt.config, ckpt.tensors)  # built here, not the engine's reference
    for model, top_ids, top_probs in ((float_model, view.float_top_ids, view.float_top_probs),
                                      (engine.model, view.quant_top_ids, view.quant_top_probs)):
        with torch.inference_mode():
            logits = model(torch.tensor([ids]), ContiguousKVCache(ckpt.config, 40).view(0, 40))[0][:-1]
        probs, expected = torch.topk(torch.softmax(logits.float(), -1), 4, dim=-1)
        np.testing.assert_array_equal(top_ids, expected.numpy())
        np.testing.assert_allclose(top_probs, probs.numpy(), rtol=1e-5, atol=1e-7)


def test_cancelled_between_windows_returns_none(tiny):
    engine = _load(tiny, "int8")
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 1  # let the first window through, stop at the next check

    assert engine.quant_drift(_ids(300, 3), cancelled=cancelled) is None
    assert engine.quant_drift(_ids(300, 3), cancelled=lambda: True) is None


def test_reference_memory_is_its_parameter_bytes_and_release_loads_it_again(tiny):
    engine = _load(tiny, "int8")
    view = engine.quant_drift(_ids(20, 4))
    reference = engine._float_reference
    assert view.reference_bytes == sum(p.numel() * p.element_size() for p in reference.parameters())
    float_engine = _load(tiny, "none")  # the same checkpoint loaded in float weighs the same
    assert view.reference_bytes == sum(float_engine.model.weight_bytes().values())
    assert view.reference_dtype == "float32"

    engine.release_float_reference()
    assert engine._float_reference is None
    again = engine.quant_drift(_ids(20, 4))
    assert engine._float_reference is not None and engine._float_reference is not reference
    assert again.kl == view.kl


def test_short_conversation_and_float_model(tiny):
    engine = _load(tiny, "int8")
    view = engine.quant_drift([5], top_n=3)
    assert view.kl == () and view.float_top_ids.shape == (0, 3) and view.agreement == 1.0
    with pytest.raises(ValueError, match="not quantized"):
        _load(tiny, "none").quant_drift(_ids(10, 5))
