"""gpt-oss's MXFP4 experts in an HF directory (as the released checkpoints store them), quantized here by
the test's own quantizer, against transformers holding the same experts dequantized by its own reference
dequantizer: loaded dequantized or kept packed, and broken tensors refused.
Shape legend: E experts, R rows, C columns, G = C/32."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.engine import Engine
from engine.errors import ModelFormatError
from engine.loaders import load_checkpoint
from engine.loaders.safetensors_dir import load_hf_dir
from engine.quant import build_model
from engine.quant.mxfp4 import E2M1, Mxfp4SparseMoE, dequantize_mxfp4
from engine.records import LoadOptions
from tests.engine.test_arch_gpt_oss import TOL, compare, make_checkpoint
from tests.engine.test_parity_hf import run_both


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The test's own MXFP4 quantizer (OCP MX rule): per 32 values, the exponent floor(log2 max|w|) - 2
    (6 = 1.5 * 2^2 is E2M1's largest), then each value rounded to the nearest E2M1 magnitude, sign apart.
    w [E, R, C] -> blocks uint8 [E, R, G, 16] (low nibble = even value), scales uint8 [E, R, G]."""
    E, R, C = w.shape
    groups = w.reshape(E, R, C // 32, 32)
    exponent = torch.floor(torch.log2(groups.abs().amax(-1).clamp(min=2.0 ** -100))) - 2  # [E, R, G]
    scaled = groups / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(E2M1[:8])
    codes = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(-1)  # [E, R, G, 32] in 0..7
    codes = (codes + 8 * (scaled < 0)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent + 127).to(torch.uint8)


@pytest.fixture
def mxfp4_checkpoint(hf_checkpoint):
    """A gpt-oss directory whose experts are MXFP4 (as the released checkpoints), and the transformers
    model holding those experts dequantized by transformers' own reference dequantizer."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    directory, hf_model = make_checkpoint(hf_checkpoint)
    state = load_file(directory / "model.safetensors")
    for n, layer in enumerate(hf_model.model.layers):
        experts = layer.mlp.experts
        for proj in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{n}.mlp.experts.{proj}"
            blocks, scales = quantize_mxfp4(state.pop(name).transpose(1, 2))  # stored output-major, as ours
            state[name + "_blocks"], state[name + "_scales"] = blocks, scales
            with torch.no_grad():  # transformers' layout: input-major, the transpose
                getattr(experts, proj).copy_(convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (directory / "config.json").write_text(json.dumps(config))
    return directory, hf_model, state


def test_mxfp4_dequantizes_as_the_transformers_reference(mxfp4_checkpoint):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    _, _, state = mxfp4_checkpoint
    blocks, scales = state["model.layers.0.mlp.experts.gate_up_proj_blocks"], state["model.layers.0.mlp.experts.gate_up_proj_scales"]
    ours = dequantize_mxfp4(blocks, scales)  # [E, 2I, D]
    assert torch.equal(ours.transpose(1, 2), convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
    assert (ours != 0).float().mean() > 0.5 and len(scales.unique()) > 1, "a quantizer that wrote (almost) only zeros"


def test_mxfp4_experts_dequantized_at_load_match_transformers(mxfp4_checkpoint):
    directory, hf_model, _ = mxfp4_checkpoint
    assert run_both(directory, hf_model) <= TOL


def test_mxfp4_experts_kept_packed_match_transformers(mxfp4_checkpoint):
    directory, hf_model, state = mxfp4_checkpoint
    ckpt = load_checkpoint(directory, keep_packed=True)
    model = build_model(ckpt.config, ckpt.tensors, "cpu", torch.float32, "auto")
    assert all(isinstance(block.mlp, Mxfp4SparseMoE) for block in model.layers)
    assert compare(model, hf_model) <= TOL
    packed = sum(t.numel() for n, t in state.items() if n.endswith(("_blocks", "_scales")))
    assert model.weight_bytes()["mxfp4"] == packed  # 4.25 bits a weight, no float copy of the experts
    # and through the engine, which keeps them packed on the CPU by default
    engine = Engine.load(directory, LoadOptions(device="cpu", dtype="float32"))
    assert isinstance(engine.model.layers[1].mlp, Mxfp4SparseMoE)
    facts = engine.facts()
    assert facts.parameters == sum(p.numel() for p in hf_model.parameters())


@pytest.mark.parametrize("damage", ["nan scale", "no scales", "wrong shape"])
def test_broken_mxfp4_tensors_are_a_model_format_error(mxfp4_checkpoint, damage):
    directory, _, state = mxfp4_checkpoint
    name = "model.layers.1.mlp.experts.down_proj_scales"
    if damage == "nan scale":
        state[name] = state[name].clone()
        state[name][0, 0, 0] = 255
    elif damage == "no scales":
        del state[name]
    else:
        state[name] = state[name][:, :, :1].contiguous()
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="MXFP4"):
        load_hf_dir(directory)
