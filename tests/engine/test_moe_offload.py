"""Expert offload (engine/runtime/moe_offload.py) on the CPU: the experts are marked as living elsewhere,
so every step goes through the copy-the-used-experts path; outputs must not change."""
from __future__ import annotations

import torch

from engine.engine import Engine
from engine.records import LoadOptions
from engine.kv_cache import ContiguousKVCache
from engine.loaders.safetensors_dir import load_hf_dir
from engine.model import Decoder
from engine.runtime.moe_offload import offload_experts
from engine.records import SamplingParams


def test_offloaded_experts_give_the_same_logits(hf_checkpoint):
    directory, _ = hf_checkpoint("qwen2_moe")
    config, tensors, _ = load_hf_dir(directory)
    tokens = torch.randint(0, config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    model = Decoder.from_tensors(config, tensors)
    before = model(tokens, ContiguousKVCache(config, 24).view(0, 24))
    moved = offload_experts(model, "cpu", expert_device="cpu")
    moes = [b.mlp for b in model.layers if b.is_moe]
    assert moes and all(m.offloaded for m in moes)
    assert moved == sum(getattr(m, n).numel() * 4 for m in moes for n in ("w_gate", "w_up", "w_down"))
    after = model(tokens, ContiguousKVCache(config, 24).view(0, 24))
    assert torch.equal(before, after)


def test_engine_option_generates_the_same_tokens(hf_checkpoint):
    directory, _ = hf_checkpoint("mixtral")
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    plain = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    offloaded = Engine.load(directory, LoadOptions(device="cpu", dtype="float32", expert_offload=True))
    assert all(b.mlp.offloaded for b in offloaded.model.layers if b.is_moe)
    prompt = [3, 14, 15, 92, 6]
    tokens = lambda engine: [s.token_id for s in engine.generate(prompt, params) if hasattr(s, "token_id")]  # noqa: E731
    assert tokens(plain) == tokens(offloaded)
