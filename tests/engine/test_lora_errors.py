"""Bad LoRA adapters get a clear ModelFormatError and leave the loaded model as it was; `--lora DIR[:SCALE]`
on the CLI loads them."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("peft")

from engine import cli  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.errors import ModelFormatError  # noqa: E402
from engine.records import LoadOptions, SamplingParams  # noqa: E402
from engine.records.adapters import adapter_spec  # noqa: E402
from tests.engine.lora_fixtures import make_adapter  # noqa: E402
from tests.tiny_models import build_hf_model, write_tiny_tokenizer  # noqa: E402

FLOAT = LoadOptions(device="cpu", dtype="float32", quant="none", threads=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-errors")
    build_hf_model("llama").save_pretrained(root / "base")
    write_tiny_tokenizer(root / "base", 128)
    make_adapter(root / "good", targets=["q_proj", "down_proj"])
    make_adapter(root / "wider", targets=["q_proj"], hidden_size=96)  # made for another model's width
    return root


def copy_with(tiny, tmp_path, config_changes=None, drop_weights=False):
    folder = tmp_path / "bad"
    shutil.copytree(tiny / "good", folder)
    if config_changes is not None:
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    if drop_weights:
        (folder / "adapter_model.safetensors").unlink()
    return folder


def logits(engine) -> torch.Tensor:
    from engine.kv_cache import ContiguousKVCache

    ids = torch.arange(10)[None]
    return engine.model(ids, ContiguousKVCache(engine.config, 10).view(0, 10))


@pytest.mark.parametrize("case, message", [
    ("missing folder", "is a folder"),
    ("no config", "no adapter_config.json"),
    ("pickled weights", "pickled adapter is never opened"),
    ("no weights", "no adapter_model.safetensors"),
    ("unknown target", r"target modules \['lm_head'\] are not supported"),
    ("rank mismatch", "rank 8 expected"),
    ("other model's shapes", "do not fit this model's q_proj"),
    ("DoRA", "DoRA"),
    ("not LoRA", "a IA3 adapter"),
    ("trained biases", "bias 'all'"),
    ("broken json", "unreadable"),
])
def test_a_bad_adapter_is_refused_and_the_model_stays_usable(tiny, tmp_path, case, message):
    engine = Engine.load(tiny / "base", FLOAT)
    before = logits(engine)
    if case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "no config":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "pickled weights":
        folder = copy_with(tiny, tmp_path, drop_weights=True)
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    elif case == "no weights":
        folder = copy_with(tiny, tmp_path, drop_weights=True)
    elif case == "broken json":
        folder = copy_with(tiny, tmp_path)
        (folder / "adapter_config.json").write_text("{r: 4")
    elif case == "other model's shapes":
        folder = tiny / "wider"
    else:
        changes = {"unknown target": {"target_modules": ["q_proj", "lm_head"]}, "rank mismatch": {"r": 8},
                   "DoRA": {"use_dora": True}, "not LoRA": {"peft_type": "IA3"},
                   "trained biases": {"bias": "all"}}[case]
        folder = copy_with(tiny, tmp_path, changes)
    with pytest.raises(ModelFormatError, match=message):
        engine.add_adapter(folder)
    assert engine.adapters() == ()
    assert torch.equal(logits(engine), before)


@pytest.mark.parametrize("key, message", [
    ("base_model.model.model.embed_tokens.lora_embedding_A", "embedding or the LM head is not supported"),
    ("base_model.model.model.layers.0.mlp.experts.1.gate_proj.lora_A.weight", "routed experts is not supported"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "DoRA is not supported"),
    ("base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight",
     "not a LoRA weight of a module this engine runs"),
    ("base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight", "has lora_A without its pair"),
    ("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", r"layer 9: the model has layers 0..1"),
])
def test_a_weight_the_engine_cannot_place_is_named(tiny, tmp_path, key, message):
    from safetensors.torch import load_file, save_file

    folder = copy_with(tiny, tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors[key] = torch.zeros(4, 64)
    if ".layers.9." in key:  # a whole pair, for a layer the model does not have
        tensors[key.replace("lora_A", "lora_B")] = torch.zeros(64, 4)
    save_file(tensors, folder / "adapter_model.safetensors")
    engine = Engine.load(tiny / "base", FLOAT)
    with pytest.raises(ModelFormatError, match=message):
        engine.add_adapter(folder)
    assert engine.adapters() == ()


def test_bad_names_and_scales_are_value_errors(tiny):
    engine = Engine.load(tiny / "base", FLOAT)
    engine.add_adapter(tiny / "good")
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        engine.set_adapter("other", enabled=False)
    with pytest.raises(ValueError, match="finite number"):
        engine.set_adapter("good", scale=float("nan"))
    with pytest.raises(ValueError, match="finite number"):
        engine.add_adapter(tiny / "good", scale=float("inf"))
    with pytest.raises(ValueError, match="no adapter named"):
        engine.remove_adapter("other")
    with pytest.raises(ValueError, match="already loaded as 'good'"):  # twice would double its effect unseen
        engine.add_adapter(tiny / "good" / ".." / "good")
    assert [a.label for a in engine.adapters()] == ["good ×1"]


def test_lora_spec_parsing():
    assert adapter_spec("ad") == ("ad", 1.0)
    assert adapter_spec("ad:0.5") == ("ad", 0.5)
    assert adapter_spec("C:\\adapters\\x") == ("C:\\adapters\\x", 1.0)
    assert adapter_spec("/a:b/ad:-1") == ("/a:b/ad", -1.0)


def test_cli_generates_with_the_adapters_it_is_given(tiny, capsys):
    argv = ["generate", "--model", str(tiny / "base"), "--prompt", "t1 t2 t3", "--max-new-tokens", "6",
            "--ignore-eos", "--json", "--quant", "none", "--dtype", "float32", "--device", "cpu",
            "--lora", f"{tiny / 'good'}:0.5"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    engine = Engine.load(tiny / "base", FLOAT)
    engine.add_adapter(tiny / "good", scale=0.5)
    ids = engine.prompt_ids("t1 t2 t3")
    done = list(engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)))[-1]
    assert printed["text"] == done.text
    assert cli.main(argv[:-1] + [str(tiny / "nowhere")]) != 0  # a bad adapter: an error, not a traceback


def test_glassbox_serve_takes_the_same_option():
    from app.serve.cli import build_parser

    assert build_parser().parse_args(["m", "--lora", "a", "--lora", "b:0.5"]).lora == [("a", 1.0), ("b", 0.5)]
