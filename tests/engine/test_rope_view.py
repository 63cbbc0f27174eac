"""The RoPE view (engine/instrumentation/rope_view.py): for every scaling type its frequencies equal the
ones a model loaded with that override rotates by (read back from the layer's own cos/sin table), whether
the view comes from that model or from an unscaled load asked about the same choice; an override applies to
the checkpoint's own RoPE config, not to the one the model was loaded with; transformers agrees."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.engine import Engine
from engine.records import LoadOptions

TRAINED = 256  # tests/tiny_models.py: max_position_embeddings
SPECS = [("none", 0), ("linear:2", 0), ("dynamic:2", 400), ("dynamic:2", 0), ("dynamic:2", 100), ("yarn:4", 0),
         ("llama3:8", 0)]


def _load(path, spec: str | None = None) -> Engine:
    return Engine.load(path, LoadOptions(device="cpu", dtype="float32", quant="none", rope_scaling=spec))


def _rotation_per_position(engine: Engine, context: int) -> tuple[np.ndarray, float]:
    """The angle the layer turns each pair by from one position to the next, and its cos/sin amplitude, read
    back from the table it rotates a `context`-token sequence with (dynamic NTK depends on that length)."""
    cos, sin = engine.model.rope.cos_sin(torch.arange(context)[None])  # [1, T, d]
    half = engine.config.head_dim // 2
    angle = torch.atan2(sin[0, 1, :half], cos[0, 1, :half])  # position 1: the inverse frequency itself
    return angle.numpy(), float(torch.hypot(cos[0, 0, 0], sin[0, 0, 0]))


@pytest.fixture
def tiny(hf_checkpoint):
    path, _ = hf_checkpoint("llama")
    return path


@pytest.mark.parametrize("spec,context", SPECS)
def test_view_equals_the_loaded_layers_frequencies(tiny, spec, context):
    scaled = _load(tiny, spec)
    plain = _load(tiny)
    length = context or scaled.config.max_seq_len
    angle, amplitude = _rotation_per_position(scaled, length)
    for view in (scaled.rope_view(None, context), plain.rope_view(spec, context)):
        assert view.scaling == spec.split(":")[0].replace("none", "default")
        assert view.context == length and view.trained_context == TRAINED and view.head_dim == 16
        np.testing.assert_allclose(view.inv_freq, angle, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(view.base_inv_freq, plain.model.rope.inv_freq.numpy(), rtol=1e-6)
        assert view.attention_scaling == pytest.approx(amplitude, rel=1e-5)
        assert view.attention_scaling == pytest.approx(scaled.model.rope.attention_scaling)
    if not spec.startswith("dynamic"):
        np.testing.assert_allclose(view.inv_freq, scaled.model.rope.inv_freq.numpy(), rtol=1e-6)


def test_scalings_do_what_they_say(tiny):
    plain = _load(tiny)
    base = np.array(plain.rope_view().base_inv_freq)
    assert plain.rope_view().inv_freq == plain.rope_view().base_inv_freq
    np.testing.assert_allclose(plain.rope_view("linear:2").inv_freq, base / 2, rtol=1e-6)
    assert plain.rope_view("dynamic:2", TRAINED).inv_freq == tuple(base)  # within the trained context: unchanged
    beyond = np.array(plain.rope_view("dynamic:2", 2 * TRAINED).inv_freq)
    assert beyond[0] == base[0] and np.all(beyond[1:] < base[1:])  # a larger base slows all but the fastest pair
    yarn = plain.rope_view("yarn:4")
    assert yarn.factor == 4.0 and yarn.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    assert yarn.context == 4 * TRAINED


def test_an_override_applies_to_the_checkpoints_own_config(tiny, hf_checkpoint):
    # loaded with yarn:4 (context 1024): asking about linear:2 shows what a reload with linear:2 gives,
    # linear over the trained 256 tokens (context 512), not over the yarn-stretched 1024
    yarn_loaded = _load(tiny, "yarn:4")
    linear_loaded = _load(tiny, "linear:2")
    view = yarn_loaded.rope_view("linear:2")
    assert view.context == 512 and view.trained_context == TRAINED
    assert view == linear_loaded.rope_view()
    # a checkpoint with its own scaling: None shows it, an override replaces it
    own, _ = hf_checkpoint("llama", seed=1, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 10000.0})
    engine = _load(own)
    assert engine.rope_view().scaling == "llama3" and engine.rope_view().trained_context == 64
    np.testing.assert_allclose(engine.rope_view().inv_freq, engine.model.rope.inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(engine.rope_view("linear:2").inv_freq, _load(own, "linear:2").rope_view().inv_freq)


@pytest.mark.parametrize("spec,context", [("linear:2", 0), ("dynamic:2", 400), ("yarn:4", 0), ("llama3:8", 0)])
def test_view_agrees_with_transformers_rope_init(tiny, spec, context):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind, factor = spec.split(":")
    params = {"rope_type": kind, "factor": float(factor), "rope_theta": 10000.0,
              "original_max_position_embeddings": TRAINED}
    if kind == "llama3":
        params |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=TRAINED,
                         rope_parameters=params)
    view = _load(tiny).rope_view(spec, context)
    inv_freq, attention = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=view.context)
    np.testing.assert_allclose(view.inv_freq, inv_freq.numpy(), rtol=1e-5)
    assert view.attention_scaling == pytest.approx(attention)
