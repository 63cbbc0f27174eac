"""Tiny PEFT LoRA adapters for the tests: made by `peft` (a test-only dependency) on the tiny llama of
tests/tiny_models.py, and the reference it gives (transformers + peft, the adapter merged)."""
from __future__ import annotations

import json

import torch

from tests.tiny_models import build_hf_model

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(folder, targets=ALL_TARGETS, r=4, alpha=8, seed=1, rslora=False, arch="llama", **overrides):
    """A random (non-zero) LoRA adapter for the tiny `arch` model, saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                        use_rslora=rslora)
    torch.manual_seed(seed)
    model = get_peft_model(build_hf_model(arch, **overrides), config)
    with torch.no_grad():  # O(0.1) deltas: large enough to show, small enough to keep greedy margins
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    model.save_pretrained(folder)
    return folder


def merged_reference(folders_and_scales, arch="llama", base=None, **overrides):
    """transformers + peft: each adapter loaded, scaled and merged into the weights, one after another."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = base if base is not None else build_hf_model(arch, **overrides)
    for folder, scale in folders_and_scales:
        peft_model = PeftModel.from_pretrained(model, folder)
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", scale)  # scaling = scale * alpha / r (or / sqrt(r))
        model = peft_model.merge_and_unload()
    return model.eval()


def fused_copy(folder, out):
    """The same adapter written as a fused checkpoint's (phi3's qkv_proj and gate_up_proj): A stacked, B block
    diagonal, rank 3r / 2r with alpha scaled alike, so it computes exactly the separate adapter's update."""
    from safetensors.torch import load_file, save_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    r, alpha = config["r"], config["lora_alpha"]
    fused, patterns_r, patterns_a = {}, {}, {}
    layers = sorted({int(k.split(".layers.")[1].split(".")[0]) for k in tensors})
    for i in layers:
        for parent, parts, name in (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                                    ("mlp", ("gate_proj", "up_proj"), "gate_up_proj")):
            stem = f"base_model.model.model.layers.{i}.{parent}"
            fused[f"{stem}.{name}.lora_A.weight"] = torch.cat([tensors.pop(f"{stem}.{p}.lora_A.weight") for p in parts])
            fused[f"{stem}.{name}.lora_B.weight"] = torch.block_diag(
                *[tensors.pop(f"{stem}.{p}.lora_B.weight") for p in parts])
            patterns_r[name], patterns_a[name] = r * len(parts), alpha * len(parts)
    out.mkdir()
    save_file({**tensors, **fused}, out / "adapter_model.safetensors")
    targets = ["qkv_proj", "gate_up_proj", "o_proj", "down_proj"]
    (out / "adapter_config.json").write_text(json.dumps({**config, "target_modules": targets,
                                                         "rank_pattern": patterns_r, "alpha_pattern": patterns_a}))
    return out
