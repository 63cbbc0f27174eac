"""PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors) -> a LoraAdapter whose
deltas land on the loaded model's own linears (engine/layers/lora.py), fused projections included.
Memory-mapped safetensors; a pickled adapter_model.bin is refused, never opened.

Owns the HF-module -> our-module table for adapters. What PEFT can express that we do not run (DoRA,
LoRA biases, modules_to_save, embedding or LM-head adapters, routed experts) is a ModelFormatError
naming it, raised before anything touches the model.
Shape legend: r rank, I input features, O output features, H heads, K kv heads, d head_dim, F hidden.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import ModelFormatError
from engine.layers.lora import LoraAdapter, LoraDelta

CONFIG, WEIGHTS, PICKLED = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
ATTENTION = {"q_proj": (0,), "k_proj": (1,), "v_proj": (2,), "qkv_proj": (0, 1, 2), "o_proj": None}
MLP = {"gate_proj": (0,), "up_proj": (1,), "gate_up_proj": (0, 1), "down_proj": None}
TARGETS = tuple(ATTENTION) + tuple(MLP)
# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight (an adapter name may follow lora_A; a
# multimodal checkpoint's text layers sit under model.language_model.layers; a vision tower's never match).
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>(?:(?:model|language_model)\.){0,3}layers\.(?P<layer>\d+)\."
                  r"(?P<parent>self_attn|mlp(?:\.shared_experts?)?)\.(?P<leaf>\w+?))"
                  r"\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$")
# Config entries PEFT writes that change what the adapter computes, and that we do not run.
_UNSUPPORTED = {"use_dora": "DoRA (use_dora)", "lora_bias": "LoRA biases (lora_bias)",
                "modules_to_save": "modules_to_save (whole modules replaced)",
                "trainable_token_indices": "trainable token embeddings", "target_parameters": "target_parameters",
                "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
                "layer_replication": "layer_replication", "use_qalora": "QA-LoRA (use_qalora)",
                "fan_in_fan_out": "fan_in_fan_out (Conv1D layouts)"}


def read_adapter(folder: str | Path, model, name: str) -> LoraAdapter:
    """The adapter in `folder`, checked against `model` and placed on its modules (in its float dtype and
    on its device). ModelFormatError for anything missing, unsupported or of the wrong shape."""
    folder = Path(folder)
    config = _read_config(folder)
    tensors = _read_tensors(folder)
    r, alpha, rslora = int(config.get("r", 8)), float(config.get("lora_alpha", 8)), bool(config.get("use_rslora"))
    weight = model.embed.weight
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise ModelFormatError(folder / WEIGHTS, _why_not(key))
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    adapter = LoraAdapter(name, str(folder), r, alpha, rslora, (), ())
    targets, layers = set(), set()
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ModelFormatError(folder / WEIGHTS, f"{module} has lora_{next(iter(pair))} without its pair")
        match = _KEY.match(f"{module}.lora_A.weight")
        layer, parent, leaf = int(match["layer"]), match["parent"], match["leaf"]
        A, B = pair["A"], pair["B"]  # [r, I], [O, r]
        rank = _pattern(config.get("rank_pattern"), module, r)
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != rank or B.shape[1] != rank:
            raise ModelFormatError(folder / WEIGHTS, f"{module}: rank {rank} expected (adapter_config.json), "
                                                     f"lora_A is {list(A.shape)} and lora_B {list(B.shape)}")
        scaling = _pattern(config.get("alpha_pattern"), module, alpha) / (math.sqrt(rank) if rslora else rank)
        A, B = A.to(weight.device, weight.dtype), B.to(weight.device, weight.dtype)
        segments = _segments(model, folder, layer, parent, leaf)
        outputs = sum(n for _, _, _, n, _ in segments)
        if B.shape[0] != outputs or any(A.shape[1] != inputs for *_, inputs in segments):
            raise ModelFormatError(folder / WEIGHTS, f"{module}: lora_A {list(A.shape)} and lora_B {list(B.shape)} "
                                   f"do not fit this model's {leaf} ({segments[0][4]} inputs, {outputs} outputs)")
        for path, lo, b_lo, n, _ in segments:
            adapter.deltas.append(LoraDelta(path, lo, A, B[b_lo:b_lo + n], scaling))
        targets.add(leaf)
        layers.add(layer)
    if not adapter.deltas:
        raise ModelFormatError(folder / WEIGHTS, "the adapter holds no LoRA weights")
    adapter.targets, adapter.layers = tuple(t for t in TARGETS if t in targets), tuple(sorted(layers))
    return adapter


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelFormatError(folder, "a LoRA adapter is a folder (adapter_config.json + adapter_model.safetensors)")
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(folder, f"no {CONFIG}: not a PEFT adapter folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(path, f"unreadable: {e}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(path, "expected a JSON object")
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise ModelFormatError(path, f"a {kind} adapter; only LoRA adapters can be loaded")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ModelFormatError(path, f"{what} is not supported")
    if config.get("bias", "none") != "none":
        raise ModelFormatError(path, f"bias {config['bias']!r} (trained biases) is not supported")
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if not (isinstance(r, int) and r > 0 and isinstance(alpha, (int, float))):
        raise ModelFormatError(path, f"r must be a positive integer and lora_alpha a number (r={r!r}, "
                                     f"lora_alpha={alpha!r})")
    targets = config.get("target_modules")
    if isinstance(targets, list):  # a regex or "all-linear" is a string: the tensors say what it matched
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ModelFormatError(path, f"target modules {unknown} are not supported; LoRA can target "
                                         f"{', '.join(TARGETS)}")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        if (folder / PICKLED).exists():
            raise ModelFormatError(folder / PICKLED, "a pickled adapter is never opened (pickle runs code); save it "
                                                     "as safetensors (PEFT save_pretrained(safe_serialization=True))")
        raise ModelFormatError(folder, f"no {WEIGHTS}")
    try:
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFormatError(path, f"unreadable safetensors: {e}") from None


def _why_not(key: str) -> str:
    if ".experts." in key:
        return f"{key}: LoRA on routed experts is not supported (attention and dense or shared MLPs are)"
    if "embed" in key or "lm_head" in key:
        return f"{key}: LoRA on the embedding or the LM head is not supported"
    if "lora_magnitude" in key:
        return f"{key}: DoRA is not supported"
    return f"{key}: not a LoRA weight of a module this engine runs ({', '.join(TARGETS)})"


def _pattern(patterns, module: str, default):
    """PEFT's per-module override (rank_pattern / alpha_pattern): a key matching the end of the module's name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _segments(model, folder: Path, layer: int, parent: str, leaf: str):
    """Where the HF module's outputs land in ours: (module path, first output there, first row of B, rows,
    input features) for each of our linears it covers."""
    if layer >= model.config.n_layers:
        raise ModelFormatError(folder / WEIGHTS, f"layer {layer}: the model has layers 0..{model.config.n_layers - 1}")
    block = model.layers[layer]
    if parent == "self_attn":
        table, container, path = ATTENTION, block.attn, f"layers.{layer}.attn"
        parts, fused, single = ("wq", "wk", "wv"), "wqkv", "wo"
        H, K, d = container.n_heads, container.n_kv_heads, container.head_dim
        sizes = (H * d, K * d, K * d)
    else:
        mlp = block.mlp
        if parent != "mlp":  # the shared expert of an MoE layer
            mlp = getattr(mlp, "shared", None) if getattr(block, "is_moe", False) else None
        elif getattr(block, "is_moe", False):
            mlp = None
        if mlp is None:
            raise ModelFormatError(folder / WEIGHTS, f"layer {layer} has no dense {parent} for {leaf}")
        table, container = MLP, mlp
        path = f"layers.{layer}.mlp" + (".shared" if parent != "mlp" else "")
        parts, fused, single = ("w_gate", "w_up"), "w_gate_up", "w_down"
        gate_up = getattr(container, fused, None)
        sizes = (gate_up.out_features // 2,) * 2 if gate_up is not None else tuple(
            getattr(getattr(container, p, None), "out_features", 0) for p in parts)
    if leaf not in table:
        raise ModelFormatError(folder / WEIGHTS, f"{leaf} in layer {layer}: not a module LoRA can target here "
                                                 f"({', '.join(table)})")
    covered = table[leaf]
    if covered is None:
        module = getattr(container, single, None)
        if module is None:
            raise ModelFormatError(folder / WEIGHTS, f"this model's layer {layer} has no {leaf}")
        return [(f"{path}.{single}", 0, 0, module.out_features, module.in_features)]
    if getattr(container, fused, None) is not None:
        module = getattr(container, fused)
        lo = sum(sizes[:covered[0]])
        return [(f"{path}.{fused}", lo, 0, sum(sizes[i] for i in covered), module.in_features)]
    out, b_lo = [], 0
    for i in covered:
        module = getattr(container, parts[i], None)
        if module is None:
            raise ModelFormatError(folder / WEIGHTS, f"this model's layer {layer} has no {leaf}")
        out.append((f"{path}.{parts[i]}", 0, b_lo, module.out_features, module.in_features))
        b_lo += module.out_features
    return out
