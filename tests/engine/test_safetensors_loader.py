"""HF directories: every architecture's tensors arrive under canonical names, shards work, and
every broken directory ends in a ModelFormatError that names the file and the problem."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import MODEL_TYPE_ALIASES
from engine.errors import ModelFormatError, UnsupportedArchitecture
from engine.loaders import load_checkpoint
from engine.loaders.safetensors_dir import load_hf_dir
from tests.tiny_models import ARCHS


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_parameter_arrives(arch, hf_checkpoint):
    directory, hf_model = hf_checkpoint(arch)
    config, tensors, raw = load_hf_dir(directory)
    model_type = arch.partition("-")[0]  # "deepseek_v2-lite": a second form of one model_type
    assert MODEL_TYPE_ALIASES.get(raw["model_type"], raw["model_type"]) == model_type  # gemma3_text -> gemma3
    assert config.arch == model_type
    n_hf = sum(p.numel() for p in hf_model.parameters())
    assert sum(t.numel() for t in tensors.values()) == n_hf


def test_sharded_checkpoint_and_progress(tmp_path):
    from tests.tiny_models import build_hf_model

    model = build_hf_model("mixtral")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    calls = []
    config, tensors, _ = load_hf_dir(tmp_path, progress=lambda *a: calls.append(a))
    assert tensors["layers.0.mlp.w_gate"].shape == (4, config.moe.expert_hidden_dim, config.dim)
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] and calls[-1][2] == calls[-1][3]


def test_bf16_load(hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    _, tensors, _ = load_hf_dir(directory, dtype=torch.bfloat16)
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())


def _break(directory, how):
    weights = directory / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "bad header":
        data = bytearray(weights.read_bytes())
        data[8:16] = b"\xff" * 8
        weights.write_bytes(bytes(data))
    elif how == "header length":
        weights.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    elif how == "missing tensor":
        state = load_file(weights)
        del state["model.layers.1.self_attn.k_proj.weight"]
        save_file(state, weights)
    elif how == "wrong shape":
        state = load_file(weights)
        state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(3, 3)
        save_file(state, weights)
    elif how == "pickle only":
        weights.unlink()
        (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    elif how == "unknown architecture":
        cfg = json.loads((directory / "config.json").read_text())
        cfg["model_type"] = "gpt_neox"
        (directory / "config.json").write_text(json.dumps(cfg))
    elif how == "bad config json":
        (directory / "config.json").write_text("{not json")
    elif how == "config missing field":
        cfg = json.loads((directory / "config.json").read_text())
        del cfg["num_hidden_layers"]
        (directory / "config.json").write_text(json.dumps(cfg))
    elif how == "no config":
        (directory / "config.json").unlink()


CASES = {
    "truncated": "model.safetensors",
    "bad header": "model.safetensors",
    "header length": "model.safetensors",
    "missing tensor": "missing tensors: layers.1.attn.wk.weight",
    "wrong shape": "layers.0.mlp.w_down.weight has shape (3, 3)",
    "pickle only": "pickle",
    "unknown architecture": "unsupported architecture 'gpt_neox'",
    "bad config json": "invalid JSON",
    "config missing field": "num_hidden_layers",
    "no config": "no config.json",
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_broken_directories_raise_model_format_error(how, hf_checkpoint):
    directory, _ = hf_checkpoint("llama")
    _break(directory, how)
    with pytest.raises(ModelFormatError) as info:
        load_hf_dir(directory)
    message = str(info.value)
    assert str(directory) in message
    assert CASES[how] in message
    if how == "unknown architecture":
        assert isinstance(info.value, UnsupportedArchitecture)


def test_pickle_files_and_non_models_are_refused(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04whatever")
    with pytest.raises(ModelFormatError, match="pickle"):
        load_checkpoint(pt)
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_checkpoint(junk)
    with pytest.raises(ModelFormatError, match="no such file"):
        load_checkpoint(tmp_path / "absent.gguf")
