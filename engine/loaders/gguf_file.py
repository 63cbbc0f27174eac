"""GGUF files (llama.cpp's format): read_metadata, config_from_gguf, and load_gguf, which turns the
tensors into canonical names (docs/weights.md) dequantized to a float dtype.

The header walk lives in gguf_header.py and the metadata -> ModelConfig rules in gguf_config.py.
Keeping quantized tensors packed is the quant layer's job; this file only makes them float, and
undoes llama.cpp's Q/K row permutation for llama-family models.
"""
from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.config import ModelConfig
from engine.errors import ModelFormatError
from engine.loaders.gguf_config import build_config, gguf_architecture
from engine.loaders.gguf_deepseek2 import merge_kv_b
from engine.loaders.gguf_gpt_oss import RENAMES as GPT_OSS_RENAMES, mxfp4_from_gguf
from engine.loaders.gguf_header import check_tensor_extents, read_header
from engine.loaders.gguf_phi3_granite_smollm3 import ROPE_FACTORS, split_fused
from engine.loaders.validate import check_tensors
from engine.quant.gguf_blocks import PACKED_KINDS, PackedGGUF

PERMUTED_QK = ("llama", "mistral", "mixtral", "granite", "smollm3")  # converted with llama.cpp's Q/K row permutation
FLOAT_TYPES = ("F32", "F16", "BF16")
# Everything gguf.quants dequantizes at ~5 ns a value (0.8 s for the default model's Q4_1 weights).
QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "MXFP4")

_RENAMES = [(re.compile(p), c) for p, c in [
    (r"token_embd\.weight", "embed.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "layers.{0}.attn_norm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"blk\.(\d+)\.post_attention_norm\.weight", "layers.{0}.attn_post_norm.weight"),  # Gemma 2/3
    (r"blk\.(\d+)\.post_ffw_norm\.weight", "layers.{0}.mlp_post_norm.weight"),
    (r"blk\.(\d+)\.attn_(q|k|v)\.(weight|bias)", "layers.{0}.attn.w{1}.{2}"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    (r"blk\.(\d+)\.attn_qkv\.(weight|bias)", "layers.{0}.attn.wqkv.{1}"),  # Phi-3: split by split_fused
    (r"blk\.(\d+)\.attn_(q|k)_norm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.weight", "layers.{0}.mlp.w_{1}.weight"),
    (r"blk\.(\d+)\.ffn_gate_inp\.weight", "layers.{0}.mlp.router.weight"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight", "layers.{0}.mlp.w_{1}"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)_shexp\.weight", "layers.{0}.mlp.shared.w_{1}.weight"),
    (r"blk\.(\d+)\.ffn_gate_inp_shexp\.weight", "layers.{0}.mlp.shared_gate.weight"),
    # DeepSeek-V2's latent attention; k_b / v_b are merged into wkv_b by gguf_deepseek2.merge_kv_b
    (r"blk\.(\d+)\.attn_(q_a|q_b|kv_b)\.(weight|bias)", "layers.{0}.attn.w{1}.{2}"),
    (r"blk\.(\d+)\.attn_kv_a_mqa\.(weight|bias)", "layers.{0}.attn.wkv_a.{1}"),
    (r"blk\.(\d+)\.attn_(q_a|kv_a)_norm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"blk\.(\d+)\.attn_(k_b|v_b)\.weight", "layers.{0}.attn.{1}"),
]]
_OLD_EXPERT = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight")  # early Mixtral GGUFs: one per expert
ROPE_FREQS = "rope_freqs.weight"


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (outermost first); GGUF lists dims innermost first
    kind: str  # ggml type name, e.g. "Q4_1"
    offset: int  # absolute byte offset in the file
    nbytes: int


def _open(path: Path) -> tuple[dict, dict[str, _TensorInfo], np.memmap]:
    """Validated metadata, tensor descriptions by name, and a read-only memory map of the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ModelFormatError(path, "is a directory, not a GGUF file")
        if size == 0:
            raise ModelFormatError(path, "empty file, not a GGUF model")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            meta, infos = read_header(path, m)  # slicing an mmap copies, so no view outlives it
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise ModelFormatError(path, f"cannot read the file: {e.strerror or e}") from None
    check_tensor_extents(path, infos, size)  # also rejects unknown type ids
    tensors: dict[str, _TensorInfo] = {}
    for name, dims, kind, offset in infos:
        qtype = GGMLQuantizationType(kind)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if dims[0] % block:  # a block never spans two rows
            raise ModelFormatError(path, f"tensor {name!r}: rows of {dims[0]} values do not fill whole "
                                         f"{block}-value {qtype.name} blocks")
        if name in tensors:
            raise ModelFormatError(path, f"tensor {name!r} appears twice")
        n = int(np.prod(dims, dtype=object))
        tensors[name] = _TensorInfo(name, tuple(int(d) for d in reversed(dims)), qtype.name, offset,
                                    n // block * block_bytes)
    return meta, tensors, data


def read_metadata(path) -> dict[str, Any]:
    """The GGUF key/value metadata as plain Python values (str, int, float, bool, lists)."""
    return _open(Path(path))[0]


def config_from_gguf(meta: dict, path, tensor_shapes: dict[str, tuple[int, ...]] | None = None) -> ModelConfig:
    """ModelConfig from GGUF metadata. Tied embeddings, biases and MoE layers are facts about which
    tensors exist, so without `tensor_shapes` (torch order, GGUF names) the file at `path` is read."""
    path = Path(path)
    gguf_architecture(meta, path)  # an unknown architecture is reported before anything is read
    if tensor_shapes is not None:
        return build_config(meta, tensor_shapes, path)
    _, infos, data = _open(path)
    freqs = _to_tensor(infos[ROPE_FREQS], data, path) if ROPE_FREQS in infos else None
    return build_config(meta, {t.name: t.shape for t in infos.values()}, path, freqs, _rope_factors(infos, data, path))


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order: per head it interleaves the two rotary halves; HF keeps them apart."""
    # H heads, d head_dim: rows [H*d] are stored as [H, d/2, 2] (pairs); HF wants [H, 2, d/2] (halves)
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _to_tensor(t: _TensorInfo, data: np.memmap, path) -> torch.Tensor:
    """float32 tensor of t's torch shape; refuses types we cannot read and non-finite values."""
    import gguf

    if t.kind not in FLOAT_TYPES + QUANT_TYPES:
        raise ModelFormatError(path, f"tensor {t.name} has type {t.kind}, which Glassbox cannot read "
                                     f"(supported: {', '.join(FLOAT_TYPES + QUANT_TYPES)})")
    raw = data[t.offset:t.offset + t.nbytes]
    with np.errstate(all="ignore"):  # corrupt scales give inf/NaN: reported below, not as warnings
        if t.kind == "F32":
            array = np.array(raw.view(np.float32))  # a copy: the map is read-only
        elif t.kind == "F16":
            array = raw.view(np.float16).astype(np.float32)
        elif t.kind == "BF16":  # bfloat16 is the top half of a float32
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:  # block-quantized: one row of bytes per row of values
            rows = int(np.prod(t.shape[:-1], dtype=np.int64))
            array = gguf.quants.dequantize(np.asarray(raw).reshape(rows, -1), gguf.GGMLQuantizationType[t.kind])
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(t.shape))
    if not bool(torch.isfinite(tensor).all()):
        raise ModelFormatError(path, f"tensor {t.name} ({t.kind}) holds NaN or infinite values: the file is corrupt")
    return tensor


def _rope_factors(infos: dict, data, path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Phi-3's LongRoPE factors (long, short), read before the config is built; None when absent."""
    if not all(name in infos for name in ROPE_FACTORS):
        return None
    return tuple(_to_tensor(infos[name], data, path) for name in ROPE_FACTORS)


def _packable(t: _TensorInfo, name: str) -> bool:
    """Linear and embedding weights in a type our int8/int4 layouts hold exactly."""
    return (t.kind in PACKED_KINDS and len(t.shape) == 2 and t.shape[1] % 32 == 0
            and name.endswith(".weight") and ".mlp.router." not in name)


def load_gguf(path, dtype: torch.dtype = torch.float32,
              progress: Callable[[int, int, int, int], None] | None = None, keep_packed: bool = False,
              on_metadata: Callable[[dict[str, Any]], None] | None = None
              ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """-> (config, canonical tensors, metadata). progress(done_tensors, total, done_bytes, total_bytes)
    is called once with zeros, then after each tensor. Raises ModelFormatError for anything wrong.
    keep_packed: 2-D Q8_0 / Q4_0 / Q4_1 weights come back as engine.quant.PackedGGUF (their raw
    blocks) instead of float tensors, for engine.quant.build_model. on_metadata(meta) runs once the
    config is known, before any tensor is converted."""
    path = Path(path)
    meta, infos, data = _open(path)
    gguf_architecture(meta, path)  # refuse an unknown architecture before converting anything
    freqs = _to_tensor(infos[ROPE_FREQS], data, path) if ROPE_FREQS in infos else None
    config = build_config(meta, {t.name: t.shape for t in infos.values()}, path, freqs,
                          _rope_factors(infos, data, path))
    if on_metadata is not None:
        on_metadata(meta)
    tensors: dict[str, torch.Tensor] = {}
    old_experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    total, total_bytes, done_bytes = len(infos), sum(t.nbytes for t in infos.values()), 0
    if progress is not None:
        progress(0, total, 0, total_bytes)  # the totals, before the slow part starts
    for done, t in enumerate(infos.values(), 1):
        target = None
        if m := _OLD_EXPERT.fullmatch(t.name):
            target = old_experts.setdefault((m.group(1), m.group(2)), {}), int(m.group(3))
        else:
            for pattern, name in (GPT_OSS_RENAMES + _RENAMES if config.arch == "gpt_oss" else _RENAMES):
                if m := pattern.fullmatch(t.name):
                    target = tensors, name.format(*m.groups())
                    break
        if target is not None and keep_packed and _packable(t, target[1]):
            blocks = PackedGGUF(t.kind, t.shape, data[t.offset:t.offset + t.nbytes])
            if not blocks.scales_finite():
                raise ModelFormatError(path, f"tensor {t.name} ({t.kind}) has NaN or infinite scales: the file is corrupt")
            target[0][target[1]] = blocks
        elif target is not None and keep_packed and t.kind == "MXFP4" and len(t.shape) == 3:  # experts stay packed
            try:
                target[0][target[1]] = mxfp4_from_gguf(data[t.offset:t.offset + t.nbytes], t.shape)
            except ValueError as e:
                raise ModelFormatError(path, f"tensor {t.name}: {e}") from None
        elif target is not None:  # rope_freqs (already in the config) and unknown extras are skipped
            value = _to_tensor(t, data, path)
            if config.norm_weight_offset and target[1].endswith("norm.weight"):
                value = value - config.norm_weight_offset  # llama.cpp stores Gemma's norms as (1 + w)
            target[0][target[1]] = value.to(dtype)
        done_bytes += t.nbytes
        if progress is not None:
            progress(done, total, done_bytes, total_bytes)
    for (layer, part), experts in old_experts.items():
        if sorted(experts) != list(range(len(experts))):
            raise ModelFormatError(path, f"layer {layer} lists experts {sorted(experts)} for ffn_{part}")
        tensors[f"layers.{layer}.mlp.w_{part}"] = torch.stack([experts[e] for e in range(len(experts))])
    for i in range(config.n_layers):
        gate = tensors.get(f"layers.{i}.mlp.shared_gate.weight")
        if gate is not None and gate.dim() == 1:
            tensors[f"layers.{i}.mlp.shared_gate.weight"] = gate.unsqueeze(0)  # GGUF keeps [D]; HF's Linear is [1, D]
        if config.arch in PERMUTED_QK:
            for name, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
                for suffix in ("weight", "bias"):
                    key = f"layers.{i}.attn.{name}.{suffix}"
                    if key in tensors and tensors[key].shape[0] == heads * config.head_dim:  # else: shape error below
                        if isinstance(tensors[key], PackedGGUF):  # rows are whole blocks: move them as bytes
                            tensors[key].permute_rows(unpermute_qk(torch.arange(tensors[key].shape[0]), heads))
                        else:
                            tensors[key] = unpermute_qk(tensors[key], heads)
    split_fused(tensors, config, path)
    merge_kv_b(tensors, config, path)
    check_tensors(tensors, config, path)
    return config, tensors, meta
