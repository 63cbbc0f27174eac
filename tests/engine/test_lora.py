"""LoRA adapters beside the weights (engine/layers/lora.py) against transformers + peft with the adapter
merged into the weights: fp32 logits within 1e-4 over a prefill and 16 decode steps, on our fused and
unfused projections, at scales 1 and 0.5, two adapters at once, an int8 base; switched off, the base
model's logits come back bit for bit, and the prefix cache is not reused across a switch."""
from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("peft")

from engine.engine import Engine  # noqa: E402
from engine.kv_cache import ContiguousKVCache  # noqa: E402
from engine.layers.lora import adapter_stack  # noqa: E402
from engine.loaders.lora_adapter import read_adapter  # noqa: E402
from engine.loaders.safetensors_dir import load_hf_dir  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.quant import dequantized_tensors  # noqa: E402
from engine.quant.int8 import Int8Weight  # noqa: E402
from engine.records import LoadOptions, RequestDone, SamplingParams  # noqa: E402
from tests.engine.lora_fixtures import fused_copy, make_adapter, merged_reference  # noqa: E402
from tests.tiny_models import build_hf_model  # noqa: E402

PREFILL, DECODE, TOL = 32, 16, 1e-4
FLOAT = LoadOptions(device="cpu", dtype="float32", quant="none", threads=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny llama checkpoint, an adapter on every projection and a second one on a few."""
    from tests.tiny_models import write_tiny_tokenizer

    root = tmp_path_factory.mktemp("lora")
    build_hf_model("llama").save_pretrained(root / "base")
    write_tiny_tokenizer(root / "base", 128)
    make_adapter(root / "style")
    make_adapter(root / "second", targets=["q_proj", "v_proj", "down_proj"], r=2, alpha=4, seed=2)
    return root


def tokens(n=PREFILL + DECODE, seed=0) -> torch.Tensor:
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def run_ours(model, ids=None) -> torch.Tensor:
    """Logits [T, V] for a prefill, then one decode step at a time, as generation feeds the model."""
    ids = tokens() if ids is None else ids
    cache = ContiguousKVCache(model.config, ids.shape[1])
    out = [model(ids[:, :PREFILL], cache.view(0, PREFILL))[0]]
    out += [model(ids[:, i:i + 1], cache.view(i, 1))[0] for i in range(PREFILL, ids.shape[1])]
    return torch.cat(out)


@torch.no_grad()
def run_hf(model, ids=None) -> torch.Tensor:
    return model(tokens() if ids is None else ids).logits[0]


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_logits_equal_peft_merged(tiny, scale):
    engine = Engine.load(tiny / "base", FLOAT)
    assert engine.model.layers[0].attn.wqkv is not None  # the adapter's q/k/v land on slices of the fused layer
    facts = engine.add_adapter(tiny / "style", scale=scale)
    assert (facts.name, facts.rank, facts.alpha, facts.scale, facts.enabled) == ("style", 4, 8.0, scale, True)
    assert facts.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    reference = run_hf(merged_reference([(tiny / "style", scale)]))
    assert (run_ours(engine.model) - reference).abs().max() <= TOL
    assert (run_hf(build_hf_model("llama")) - reference).abs().max() > 0.1  # the adapter changes something


def test_switching_off_gives_the_base_logits_bit_for_bit(tiny):
    engine = Engine.load(tiny / "base", FLOAT)
    base = run_ours(engine.model)
    engine.add_adapter(tiny / "style")
    on = run_ours(engine.model)
    engine.set_adapter("style", enabled=False)
    assert torch.equal(run_ours(engine.model), base)
    engine.set_adapter("style", enabled=True, scale=1.0)
    assert torch.equal(run_ours(engine.model), on)
    engine.remove_adapter("style")
    assert torch.equal(run_ours(engine.model), base) and engine.adapters() == ()


def test_two_adapters_and_a_scale_changed_live(tiny, tmp_path):
    engine = Engine.load(tiny / "base", FLOAT)
    engine.add_adapter(tiny / "style")
    engine.add_adapter(tiny / "second", scale=0.5)
    both = merged_reference([(tiny / "style", 1.0), (tiny / "second", 0.5)])
    assert (run_ours(engine.model) - run_hf(both)).abs().max() <= TOL
    engine.set_adapter("style", scale=0.5)
    engine.set_adapter("second", enabled=False)
    assert (run_ours(engine.model) - run_hf(merged_reference([(tiny / "style", 0.5)]))).abs().max() <= TOL
    namesake = shutil.copytree(tiny / "style", tmp_path / "elsewhere" / "style")  # another folder, same name
    again = engine.add_adapter(namesake)
    assert again.name == "style-2" and [a.name for a in engine.adapters()] == ["style", "second", "style-2"]


def test_unfused_projections_and_a_fused_checkpoints_adapter(tiny, tmp_path):
    """q/k/v and gate/up kept apart (our unfused model), and phi3-style qkv_proj / gate_up_proj adapters split
    over them or landing whole on our fused layers: all the same update."""
    reference = run_hf(merged_reference([(tiny / "style", 1.0)]))
    fused_adapter = fused_copy(tiny / "style", tmp_path / "fused")
    config, tensors, _ = load_hf_dir(tiny / "base")
    for folder in (tiny / "style", fused_adapter):
        unfused = Decoder.from_tensors(config, tensors)
        assert unfused.layers[0].attn.wqkv is None and unfused.layers[0].attn.wq is not None
        adapter_stack(unfused).add(read_adapter(folder, unfused, "a"))
        assert (run_ours(unfused) - reference).abs().max() <= TOL
    engine = Engine.load(tiny / "base", FLOAT)
    assert engine.add_adapter(fused_adapter).targets == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert (run_ours(engine.model) - reference).abs().max() <= TOL


def test_rslora_scaling(tiny, tmp_path):
    folder = make_adapter(tmp_path / "rs", targets=["q_proj", "up_proj"], r=4, alpha=4, rslora=True)
    engine = Engine.load(tiny / "base", FLOAT)
    assert engine.add_adapter(folder).rslora
    assert (run_ours(engine.model) - run_hf(merged_reference([(folder, 1.0)]))).abs().max() <= TOL


def round_tripped_hf_model():
    """The tiny llama with every 2-D weight through int8 and back: what an int8 engine multiplies by."""
    model = build_hf_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(Int8Weight.quantize(p.detach()).dequantize().float())
    return model


def test_int8_base_stays_quantized_and_matches(tiny):
    """Exact int8 (fp32 activations): against transformers + peft merged over the int8-rounded weights. The
    default int8 (bf16 activations): within the quantization's own error, measured without the adapter."""
    reference = run_hf(merged_reference([(tiny / "style", 0.5)], base=round_tripped_hf_model()))
    exact = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="int8", quant_exact=True))
    exact.add_adapter(tiny / "style", scale=0.5)
    assert type(exact.model.layers[0].attn.wqkv).__name__ == "QuantLinear"
    assert (run_ours(exact.model) - reference).abs().max() <= TOL
    fast = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="int8"))
    base_error = (run_ours(fast.model) - run_hf(round_tripped_hf_model())).abs().max()
    fast.add_adapter(tiny / "style", scale=0.5)
    assert (run_ours(fast.model) - reference).abs().max() <= 2 * base_error + 1e-3


def test_greedy_generation_equals_transformers_with_peft(tiny):
    engine = Engine.load(tiny / "base", FLOAT)
    engine.add_adapter(tiny / "style")
    prompt = tokens(12, seed=3)
    expected = merged_reference([(tiny / "style", 1.0)]).generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False, pad_token_id=0)
    done = list(engine.generate(prompt[0].tolist(), SamplingParams(temperature=0, max_new_tokens=16,
                                                                     ignore_eos=True)))[-1]
    assert list(done.token_ids) == expected[0, 12:].tolist()


def _run(engine, ids) -> RequestDone:
    request = engine.make_request(ids, SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
    return [r for r in engine.stream(request) if isinstance(r, RequestDone)][0]


def test_the_prefix_cache_is_not_reused_across_a_switch(tiny):
    engine = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="none", kv_block_size=4))
    ids = tokens(20, seed=4)[0].tolist()
    base = _run(engine, ids)
    assert _run(engine, ids).cached_prompt_tokens > 0  # the cache works...
    engine.add_adapter(tiny / "style")
    switched = _run(engine, ids)
    assert switched.cached_prompt_tokens == 0  # ...and is dropped when an adapter comes on
    assert _run(engine, ids).cached_prompt_tokens > 0
    engine.set_adapter("style", scale=0.5)
    assert _run(engine, ids).cached_prompt_tokens == 0
    engine.set_adapter("style", enabled=False)
    off = _run(engine, ids)
    assert off.cached_prompt_tokens == 0 and off.results[0].token_ids == base.results[0].token_ids
    fresh = Engine.load(tiny / "base", FLOAT)
    fresh.add_adapter(tiny / "style")
    assert _run(fresh, ids).results[0].token_ids == switched.results[0].token_ids


def test_comparison_with_and_without_the_adapters(tiny):
    engine = Engine.load(tiny / "base", FLOAT)
    ids = tokens(24, seed=5)[0].tolist()
    with pytest.raises(ValueError, match="no adapter is enabled"):
        engine.adapter_comparison(ids, 7)
    engine.add_adapter(tiny / "style", scale=0.5)
    view = engine.adapter_comparison(ids, 7, top_n=5)
    without = torch.softmax(run_hf(build_hf_model("llama"), torch.tensor([ids]))[-1], -1)
    with_it = torch.softmax(run_hf(merged_reference([(tiny / "style", 0.5)]), torch.tensor([ids]))[-1], -1)
    assert view.adapters == ("style ×0.5",) and view.position == 24 and view.target_id == 7
    assert 5 <= len(view.token_ids) <= 10 and view.token_ids[0] == int(without.argmax())
    assert max(abs(p - float(without[t])) for t, p in zip(view.token_ids, view.base_probs)) < 1e-5
    assert max(abs(p - float(with_it[t])) for t, p in zip(view.token_ids, view.probs)) < 1e-5
    kl = float((without * (without.log() - with_it.log())).sum())
    assert view.kl == pytest.approx(kl, abs=1e-5) and view.kl > 0
    assert view.top1_same == (int(without.argmax()) == int(with_it.argmax()))
    assert engine.adapters()[0].enabled  # the comparison left the adapter on
    assert engine.adapter_comparison(ids, 7, cancelled=lambda: True) is None


@pytest.mark.parametrize("drafter", ["self-int4", "self-layers:1", "ngram"])
def test_speculative_greedy_with_an_adapter_equals_plain_greedy(tiny, drafter):
    from engine.records import SpeculativeOptions

    engine = Engine.load(tiny / "base", FLOAT)
    engine.add_adapter(tiny / "style", scale=0.5)
    prompt = tokens(10, seed=6)[0].tolist()
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    plain = list(engine.generate(prompt, params))[-1]
    fast = list(engine.generate(prompt, params, speculative=SpeculativeOptions(drafter=drafter, k=3)))[-1]
    assert fast.token_ids == plain.token_ids


def test_quantization_drift_measures_quantization_alone(tiny):
    engine = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="int8", quant_exact=True))
    ids = tokens(24, seed=7)[0].tolist()
    before = engine.quant_diff(ids)
    engine.add_adapter(tiny / "style")
    assert engine.quant_diff(ids).kl == before.kl and engine.adapters()[0].enabled


@pytest.mark.parametrize("arch, targets", [
    ("qwen2", ["q_proj", "k_proj", "v_proj", "up_proj"]),  # q/k/v biases beside the delta
    ("qwen3", ["q_proj", "k_proj", "o_proj", "down_proj"]),  # q/k-norm after the fused projection's delta
    ("qwen2_moe", ["v_proj", "o_proj"]),  # attention of an MoE
    ("qwen2_moe", ["gate_proj", "up_proj", "down_proj"]),  # its shared expert (layer 0) and dense MLP (layer 1)
    ("gemma", ["q_proj", "v_proj", "gate_proj", "down_proj"]),  # GeGLU
    ("gemma2", ["q_proj", "o_proj", "up_proj"]),  # soft-capping, pre- and post-norms
    ("gemma3", ["k_proj", "v_proj", "down_proj"]),
    ("phi3", ["qkv_proj", "gate_up_proj", "o_proj"]),  # the checkpoint's own fused projections
    ("granite", ["q_proj", "down_proj"]),  # multipliers
    ("smollm3", ["q_proj", "up_proj"]),  # NoPE layers
    ("gpt_oss", ["q_proj", "o_proj"]),  # attention sinks; its experts are routed (not LoRA targets here)
    ("deepseek_v2-lite", ["q_proj"]),  # latent attention's uncompressed query
])
def test_other_architectures(arch, targets, hf_checkpoint, tmp_path):
    directory, _ = hf_checkpoint(arch)
    folder = make_adapter(tmp_path / "ad", targets=targets, arch=arch)
    engine = Engine.load(directory, FLOAT)
    engine.add_adapter(folder, scale=0.5)
    reference = run_hf(merged_reference([(folder, 0.5)], arch=arch))
    assert (run_ours(engine.model) - reference).abs().max() <= TOL


def test_int4_base_against_the_dequantized_model_with_the_adapter(tiny):
    """int4 weights stay packed: the adapter beside them computes what it computes beside their dequantized
    float copy (our float path is the one checked against peft above)."""
    config, tensors, _ = load_hf_dir(tiny / "base")
    reference = Decoder.from_tensors(config, dequantized_tensors(tensors, "int4-g32"))
    adapter_stack(reference).add(read_adapter(tiny / "style", reference, "style"))
    engine = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="int4-g32",
                                                    quant_exact=True))
    base = run_ours(engine.model)
    engine.add_adapter(tiny / "style")
    assert "int4" in dict(engine.facts().weight_bytes)
    assert (run_ours(engine.model) - run_ours(reference)).abs().max() <= TOL
    engine.set_adapter("style", enabled=False)
    assert torch.equal(run_ours(engine.model), base)


def test_blocks_filled_across_a_switch_are_never_offered_later(tiny):
    """A request in flight when an adapter comes on finishes with K/V from both models; the blocks it fills
    after the switch must not match a later request's prefix (the prefix chain starts anew at a switch)."""
    from engine.records import StepRecord

    engine = Engine.load(tiny / "base", LoadOptions(device="cpu", dtype="float32", quant="none", kv_block_size=4))
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    first = engine.submit(engine.make_request(tokens(4, seed=8)[0].tolist(), params))
    engine.step()  # the prompt's block is registered under the base model
    engine.add_adapter(tiny / "style")
    while engine.has_work():  # the rest of its blocks fill after the switch
        done = [r for r in engine.step() if isinstance(r, RequestDone) and r.request_id == first]
    full = tokens(4, seed=8)[0].tolist() + list(done[0].results[0].token_ids)

    def first_prob(e) -> float:
        request = e.make_request(full, SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True))
        return next(r for r in e.stream(request) if isinstance(r, StepRecord)).prob

    fresh = Engine.load(tiny / "base", FLOAT)
    fresh.add_adapter(tiny / "style")
    expected = first_prob(fresh)
    assert first_prob(engine) == pytest.approx(expected, abs=1e-5)  # computes; registers its own blocks
    assert first_prob(engine) == pytest.approx(expected, abs=1e-5)  # reuses its own, not the first request's
