"""Interventions (engine/instrumentation/interventions.py, lens.py): the model's own what-if equals
transformers with the same change made by a hook on its modules; nothing switched off changes nothing,
bit for bit; generation runs with them only while set, and the prefix cache never crosses a change."""
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from engine.engine import Engine
from engine.kv_cache import ContiguousKVCache
from engine.records import GenerationRequest, Intervention, LoadOptions, RequestDone, SamplingParams, StepRecord

CONTEXT = [3, 9, 4, 3, 9, 4, 11, 5, 17, 2, 8, 30, 41, 7, 19, 23, 60, 5, 12, 99]


def load(directory, quant="none") -> Engine:
    return Engine.load(directory, LoadOptions(device="cpu", dtype="float32", quant=quant))


def hf_probs(hf_model, ids) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(hf_model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)  # [V]


@contextmanager
def hf_head_scaled(hf_model, layer: int, head: int, scale: float):
    """The head's slice of o_proj's input scaled: what the engine's head intervention means."""
    attn = hf_model.model.layers[layer].self_attn
    d = attn.head_dim

    def hook(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] *= scale
        return (x,)

    handle = attn.o_proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hf_mlp_scaled(hf_model, layer: int, scale: float):
    handle = hf_model.model.layers[layer].mlp.register_forward_hook(lambda m, a, out: out * scale)
    try:
        yield
    finally:
        handle.remove()


class HfExpertMasked(TorchFunctionMode):
    """The router's logit for `expert` set to -inf: HF's router computes its logits with F.linear on its
    own weight inside forward, so the mask is applied to that call's result."""

    def __init__(self, router_weight, expert: int):
        super().__init__()
        self.weight, self.expert = router_weight, expert

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (F.linear, torch._C._nn.linear) and len(args) > 1 and args[1] is self.weight:
            out = out.clone()
            out[..., self.expert] = float("-inf")
        return out


def assert_view_matches(view, base: torch.Tensor, changed: torch.Tensor):
    ids = list(view.token_ids)
    np.testing.assert_allclose(view.base_probs, base[ids].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(view.probs, changed[ids].numpy(), atol=1e-5, rtol=0)
    kl = float((base * (base.log() - changed.log())).sum())
    assert view.kl == pytest.approx(kl, abs=1e-4)
    assert view.top1_same == (int(base.argmax()) == int(changed.argmax()))
    # the lens under the interventions ends in the intervened distribution
    np.testing.assert_allclose(view.lens.top_probs[-1, -1], torch.topk(changed, view.lens.top_ids.shape[-1])
                               .values.numpy(), atol=1e-5, rtol=0)
    assert list(view.base_probs) == sorted(view.base_probs, reverse=True)


@pytest.mark.parametrize("arch,quant", [("qwen2_moe", "none"), ("llama", "int8")])
def test_interventions_that_switch_nothing_off_change_nothing_bit_for_bit(hf_checkpoint, arch, quant):
    directory, _ = hf_checkpoint(arch)
    engine = load(directory, quant)
    config = engine.config
    ones = tuple(Intervention("head", layer, h, 1.0) for layer in range(config.n_layers) for h in range(config.n_heads))
    ones += tuple(Intervention("mlp", layer, 0, 1.0) for layer in range(config.n_layers))
    ones += tuple(Intervention("expert", layer, e, 1.0) for layer in range(config.n_layers)
                  if config.moe_layers[layer] for e in range(config.moe.n_experts))
    plain = engine.logit_lens(CONTEXT, 7, columns=5, top_n=6)
    for interventions in ((), ones):
        lens = engine.logit_lens(CONTEXT, 7, columns=5, top_n=6, interventions=interventions)
        assert np.array_equal(lens.top_probs, plain.top_probs) and np.array_equal(lens.top_ids, plain.top_ids)
        assert np.array_equal(lens.next_probs, plain.next_probs)
        view = engine.intervene(CONTEXT, 7, interventions)
        assert view.kl == 0.0 and view.probs == view.base_probs and view.top1_same


def test_head_switched_off_equals_transformers_with_that_heads_slice_zeroed(hf_checkpoint):
    directory, hf_model = hf_checkpoint("llama")
    engine = load(directory)
    base = hf_probs(hf_model, CONTEXT)
    for layer, head, scale in ((1, 2, 0.0), (0, 0, 0.0), (0, 3, 2.5)):
        view = engine.intervene(CONTEXT, 7, (Intervention("head", layer, head, scale),))
        with hf_head_scaled(hf_model, layer, head, scale):
            changed = hf_probs(hf_model, CONTEXT)
        assert view.kl > 1e-6  # the change shows
        assert_view_matches(view, base, changed)


def test_mlp_switched_off_equals_transformers_with_its_output_zeroed(hf_checkpoint):
    directory, hf_model = hf_checkpoint("qwen3")  # q/k-norm
    engine = load(directory)
    base = hf_probs(hf_model, CONTEXT)
    view = engine.intervene(CONTEXT, 7, (Intervention("mlp", 0, scale=0.0), Intervention("head", 1, 1, 0.0)))
    with hf_mlp_scaled(hf_model, 0, 0.0), hf_head_scaled(hf_model, 1, 1, 0.0):
        changed = hf_probs(hf_model, CONTEXT)
    assert_view_matches(view, base, changed)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "olmoe"])
def test_expert_removed_from_routing_equals_transformers_with_its_router_logit_masked(hf_checkpoint, arch):
    directory, hf_model = hf_checkpoint(arch)
    engine = load(directory)
    base = hf_probs(hf_model, CONTEXT)
    view = engine.intervene(CONTEXT, 7, (Intervention("expert", 0, 2, 0.0),))
    with HfExpertMasked(hf_model.model.layers[0].mlp.gate.weight, 2):
        changed = hf_probs(hf_model, CONTEXT)
    assert not torch.allclose(base, changed, atol=1e-4)  # expert 2 mattered
    assert_view_matches(view, base, changed)


def test_expert_scaled_equals_its_down_projection_scaled(hf_checkpoint):
    directory, _ = hf_checkpoint("mixtral")
    engine, reference = load(directory), load(directory)
    scales = (0.25, 0.5, 2.0, 1.5)  # every expert, so that the ones the tokens are routed to are among them
    with torch.no_grad():
        for e, scale in enumerate(scales):  # an expert's output is linear in its down projection
            reference.model.layers[1].mlp.w_down[e] *= scale
    view = engine.intervene(CONTEXT, 7, tuple(Intervention("expert", 1, e, s) for e, s in enumerate(scales)))
    weight = reference.model.embed.weight
    cache = ContiguousKVCache(reference.config, len(CONTEXT), dtype=weight.dtype)
    expected = torch.softmax(reference.model(torch.tensor([CONTEXT]), cache.view(0, len(CONTEXT)))[0, -1], -1)
    np.testing.assert_allclose(view.probs, expected[list(view.token_ids)].numpy(), atol=1e-5, rtol=0)
    assert view.kl > 0


def hf_greedy(hf_model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(hf_probs(hf_model, ids).argmax()))
    return ids[len(prompt):]


def engine_greedy(engine, prompt, n) -> tuple[list[int], int]:
    """The tokens and how many prompt tokens came from the prefix cache."""
    request = GenerationRequest(tuple(prompt), SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True))
    records = list(engine.stream(request))
    done = records[-1]
    assert isinstance(done, RequestDone) and done.error is None
    return [r.token_id for r in records if isinstance(r, StepRecord)], done.cached_prompt_tokens


def test_generation_runs_with_the_interventions_set_and_never_reuses_the_other_models_prefix(hf_checkpoint):
    directory, hf_model = hf_checkpoint("llama")
    engine = load(directory)
    prompt = [(7 * i + 3) % 120 for i in range(40)]  # two full KV blocks of 16 to cache
    plain, _ = engine_greedy(engine, prompt, 12)
    assert plain == hf_greedy(hf_model, prompt, 12)
    assert engine_greedy(engine, prompt, 12) == (plain, 32)  # the prefix cache serves the unchanged model
    blocks = engine._runner.blocks

    changes = (Intervention("head", 0, 1, 0.0), Intervention("mlp", 1, scale=0.5))
    engine.set_interventions(changes)
    assert engine.interventions == changes and blocks.stats().cached_free == 0
    changed, cached = engine_greedy(engine, prompt, 12)
    assert cached == 0  # nothing computed by the model as loaded was reused
    with hf_head_scaled(hf_model, 0, 1, 0.0), hf_mlp_scaled(hf_model, 1, 0.5):
        expected = hf_greedy(hf_model, prompt, 12)
    assert changed == expected and changed != plain

    engine.set_interventions(())
    assert engine.interventions == () and blocks.stats().cached_free == 0
    assert engine_greedy(engine, prompt, 12) == (plain, 0)  # the model as loaded again, recomputed
    blocks.check_invariants([])  # nothing in flight holds a block: every block is free or cached
    assert blocks.stats().used == 0


def test_replays_compare_against_the_model_as_loaded_while_interventions_are_set(hf_checkpoint):
    directory, hf_model = hf_checkpoint("llama")
    engine = load(directory)
    before_lens = engine.logit_lens(CONTEXT, 7, columns=4)
    asked = (Intervention("head", 1, 0, 0.0),)
    before_view = engine.intervene(CONTEXT, 7, asked)
    engine.set_interventions((Intervention("mlp", 0, scale=0.0),))
    # the persistent MLP-off is suspended during replays: the lens and the comparison see the model as loaded
    lens = engine.logit_lens(CONTEXT, 7, columns=4)
    assert np.array_equal(lens.top_probs, before_lens.top_probs) and lens.interventions == ()
    view = engine.intervene(CONTEXT, 7, asked)
    assert view.base_probs == before_view.base_probs and view.probs == before_view.probs
    # ... and in force again after them
    weight = engine.model.embed.weight
    cache = ContiguousKVCache(engine.config, len(CONTEXT), dtype=weight.dtype)
    live = torch.softmax(engine.model(torch.tensor([CONTEXT]), cache.view(0, len(CONTEXT)))[0, -1], -1)
    with hf_mlp_scaled(hf_model, 0, 0.0):
        np.testing.assert_allclose(live.numpy(), hf_probs(hf_model, CONTEXT).numpy(), atol=1e-5, rtol=0)
    engine.set_interventions(())
    assert not engine.model.layers[0].mlp._forward_hooks


@pytest.mark.parametrize("bad", [Intervention("head", 2, 0), Intervention("head", 0, 4), Intervention("mlp", 9),
                                 Intervention("expert", 1, 0), Intervention("expert", 0, 4)])
def test_what_the_model_does_not_have_is_a_clear_error(hf_checkpoint, bad):
    directory, _ = hf_checkpoint("qwen2_moe")  # layer 0 MoE with 4 experts, layer 1 dense; 4 heads
    engine = load(directory)
    with pytest.raises(ValueError, match="layer"):
        engine.intervene(CONTEXT, 7, (bad,))
    with pytest.raises(ValueError):
        engine.set_interventions((bad,))
    assert engine.interventions == ()


def test_every_expert_of_a_layer_removed_is_refused(hf_checkpoint):
    directory, _ = hf_checkpoint("mixtral")
    engine = load(directory)
    with pytest.raises(ValueError, match="at least one expert"):
        engine.logit_lens(CONTEXT, 7, interventions=tuple(Intervention("expert", 0, e) for e in range(4)))


def test_cancelled_intervention_returns_none_and_leaves_no_hooks(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    engine = load(directory)
    asked = (Intervention("head", 0, 0, 0.0), Intervention("mlp", 1))
    assert engine.intervene(CONTEXT, 7, asked, cancelled=lambda: True) is None
    calls = []
    assert engine.intervene(CONTEXT, 7, asked, cancelled=lambda: calls.append(1) or len(calls) > 2) is None
    assert not engine.model.layers[0].attn.wo._forward_pre_hooks and not engine.model.layers[1].mlp._forward_hooks
