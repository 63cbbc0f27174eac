"""Hugging Face model directories: config.json + model.safetensors (or a sharded index) ->
ModelConfig and canonical tensors (docs/weights.md). Memory-mapped reads; pickle never.

Owns the HF-name -> canonical-name table for every supported architecture, including both
MoE layouts (one tensor per expert as on the Hub; transformers 5's fused 3-D experts).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.config import ModelConfig
from engine.errors import ModelFormatError
from engine.loaders.validate import check_tensors

# (HF pattern, canonical name); {i} is the layer index, {e} an expert index.
_RENAMES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "layers.{0}.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", "layers.{0}.attn.w{1}.{2}"),
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.w_{1}.weight"),
    (r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight", "layers.{0}.mlp.router.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.shared.w_{1}.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_expert_gate\.weight", "layers.{0}.mlp.shared_gate.weight"),
    # DeepSeek-V2: latent attention's projections and norms, and its (ungated) shared experts
    (r"model\.layers\.(\d+)\.self_attn\.(q_a|q_b|kv_a|kv_b)_proj(?:_with_mqa)?\.(weight|bias)", "layers.{0}.attn.w{1}.{2}"),
    (r"model\.layers\.(\d+)\.self_attn\.(q_a|kv_a)_layernorm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.shared_experts\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.shared.w_{1}.weight"),
]
_RENAMES = [(re.compile(p), c) for p, c in _RENAMES]
# Per-expert tensors, stacked into [E, ...] after reading.
_EXPERT = re.compile(r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight")
_EXPERT_PART = {"gate_proj": "w_gate", "up_proj": "w_up", "down_proj": "w_down",
                "w1": "w_gate", "w3": "w_up", "w2": "w_down"}  # Mixtral's names: w1 gate, w3 up, w2 down
# config.json counts and widths, with ceilings far above any real model (layers size per-layer tuples).
_COUNTS = {"num_hidden_layers": 1 << 12, "max_window_layers": 1 << 12, "decoder_sparse_step": 1 << 12,
           **dict.fromkeys(["num_attention_heads", "num_key_value_heads", "num_experts", "num_local_experts",
                            "num_experts_per_tok", "n_routed_experts", "n_shared_experts", "n_group", "topk_group",
                            "first_k_dense_replace", "moe_layer_freq"], 1 << 16),
           **dict.fromkeys(["kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"], 1 << 20),
           **dict.fromkeys(["hidden_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                            "head_dim", "vocab_size", "max_position_embeddings", "sliding_window"], 1 << 31)}
_FUSED = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
# Phi-3 stores q, k, v as one qkv_proj and gate, up as one gate_up_proj: split into the canonical names here
# (engine.quant.concat.fuse_projections stacks them again for the fast path, whatever the weights' format).
_DENSE_FUSED = re.compile(r"model\.layers\.(\d+)\.(self_attn\.qkv_proj|mlp\.gate_up_proj)\.(weight|bias)")
# Gemma 2/3 norm four times per layer; there post_attention_layernorm is the attention output's norm, not the MLP's.
_POST_NORMS = {"post_attention_layernorm": "attn_post_norm", "pre_feedforward_layernorm": "mlp_norm",
               "post_feedforward_layernorm": "mlp_post_norm"}
_POST_NORM = re.compile(r"model\.layers\.(\d+)\.(" + "|".join(_POST_NORMS) + r")\.weight")
# A multimodal Gemma 3 checkpoint keeps its text model under language_model (v4 and v5 spell it differently).
_TEXT_MODEL = re.compile(r"(?:model\.language_model\.|language_model\.model\.)")


def _canonical(name: str) -> str | None:
    for pattern, target in _RENAMES:
        m = pattern.fullmatch(name)
        if m:
            return target.format(*m.groups())
    return None


def hf_state_to_canonical(state: dict[str, torch.Tensor], config: ModelConfig,
                          keep_packed: bool = False, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Rename (and stack or split expert tensors of) an HF state dict. Unknown names are dropped.
    keep_packed: gpt-oss's MXFP4 experts stay packed (engine.quant.mxfp4.PackedMxfp4), else become dtype."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    if config.arch == "gpt_oss":  # its sinks, biased router and fused (maybe MXFP4) experts; the rest is shared
        from engine.loaders.gpt_oss import gpt_oss_to_canonical

        state = dict(state)
        out.update(gpt_oss_to_canonical(state, keep_packed, dtype))
    for name, tensor in state.items():
        name = _TEXT_MODEL.sub("model.", name, count=1).replace("language_model.lm_head.", "lm_head.")
        if config.post_norms and (m := _POST_NORM.fullmatch(name)):
            out[f"layers.{m.group(1)}.{_POST_NORMS[m.group(2)]}.weight"] = tensor
        elif (m := _EXPERT.fullmatch(name)) and m.group(3) in _EXPERT_PART:
            experts.setdefault((int(m.group(1)), _EXPERT_PART[m.group(3)]), {})[int(m.group(2))] = tensor
        elif m := _FUSED.fullmatch(name):
            layer = m.group(1)
            if m.group(2) == "gate_up_proj":  # [E, 2I, D]: gate rows first, then up
                gate, up = tensor.chunk(2, dim=1)
                out[f"layers.{layer}.mlp.w_gate"], out[f"layers.{layer}.mlp.w_up"] = gate, up
            else:
                out[f"layers.{layer}.mlp.w_down"] = tensor
        elif m := _DENSE_FUSED.fullmatch(name):
            out.update(_split_dense(m.group(1), m.group(2), m.group(3), tensor, config))
        elif (target := _canonical(name)) is not None:
            out[target] = tensor
    for (layer, part), by_index in experts.items():
        if sorted(by_index) != list(range(len(by_index))):
            missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
            raise ValueError(f"layer {layer} is missing experts {missing}")
        out[f"layers.{layer}.mlp.{part}"] = torch.stack([by_index[e] for e in range(len(by_index))])
    if config.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def _split_dense(layer: str, kind: str, suffix: str, tensor: torch.Tensor, config: ModelConfig) -> dict:
    """One fused projection's rows -> its parts' canonical tensors (q, k, v rows in order; gate, then up)."""
    if kind == "self_attn.qkv_proj":
        sizes = (config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim,
                 config.n_kv_heads * config.head_dim)
        names = [f"layers.{layer}.attn.w{p}.{suffix}" for p in "qkv"]
    else:
        sizes = (config.hidden_dim, config.hidden_dim)
        names = [f"layers.{layer}.mlp.w_{p}.{suffix}" for p in ("gate", "up")]
    if tensor.shape[0] != sum(sizes):
        raise ValueError(f"layer {layer}: {kind} has {tensor.shape[0]} rows, the config implies {sum(sizes)}")
    return dict(zip(names, tensor.split(sizes)))


def _read_config(path: Path) -> tuple[ModelConfig, dict]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(path, "no config.json: not a Hugging Face model directory")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(config_file, f"invalid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ModelFormatError(config_file, "expected a JSON object")
    for key, limit in _COUNTS.items():  # sized by before any tensor is read: bound them first
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit):
            raise ModelFormatError(config_file, f"{key} = {str(value)[:40]} is not an integer in 0..{limit}")
    return ModelConfig.from_hf(raw, config_file), raw


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({path / name for name in weight_map.values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ModelFormatError(index, f"invalid shard index: {type(e).__name__}: {e}") from None
        for f in files:
            if not f.is_file() or f.parent != path:
                raise ModelFormatError(index, f"names a shard that is not in the directory: {f.name}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles:
        raise ModelFormatError(path, f"only pickle checkpoints found ({', '.join(pickles)}): loading them can run "
                                     "arbitrary code, so Glassbox refuses them; convert the model to safetensors")
    raise ModelFormatError(path, "no model.safetensors, shard index or *.safetensors file")


def load_hf_dir(path, dtype: torch.dtype = torch.float32, progress=None, keep_packed: bool = False):
    """-> (ModelConfig, canonical tensors, raw config.json dict). Raises ModelFormatError.
    keep_packed: MXFP4 experts (gpt-oss) come back as PackedMxfp4 instead of dequantized to dtype."""
    path = Path(path)
    config, raw = _read_config(path)
    files = _weight_files(path)
    state: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for f in files:
            handle = safe_open(f, framework="pt")
            handles.append((f, handle))
        total = sum(len(h.keys()) for _, h in handles)
        total_bytes = sum(f.stat().st_size for f, _ in handles)
        done = files_bytes = 0
        for f, handle in handles:
            in_file, names, size = 0, list(handle.keys()), f.stat().st_size
            for n, name in enumerate(names, 1):
                tensor = handle.get_tensor(name)
                state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
                done += 1
                in_file += tensor.numel() * tensor.element_size()
                if progress is not None:
                    # bytes are file bytes: a file's header is credited with its last tensor
                    progress(done, total, files_bytes + (size if n == len(names) else in_file), total_bytes)
            files_bytes += size
    except SafetensorError as e:
        raise ModelFormatError(f, f"corrupt or truncated safetensors file: {e}") from None
    except (OSError, RuntimeError, ValueError) as e:  # short reads surface as these from the mmap
        raise ModelFormatError(f, f"cannot read tensors: {type(e).__name__}: {e}") from None
    try:
        tensors = hf_state_to_canonical(state, config, keep_packed, dtype)
    except ValueError as e:
        raise ModelFormatError(path, str(e)) from None
    check_tensors(tensors, config, path)
    return config, tensors, raw
