"""GGUF files (llama.cpp's format), read with the `gguf` package: metadata -> ModelConfig,
tensors -> canonical names (docs/weights.md), dequantized to the requested float dtype.

Keeping quantized tensors packed is the quantization layer's job; this file only makes them
float. llama-family Q/K rows are stored permuted for llama.cpp's interleaved RoPE: we undo it.
"""
from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.config import MoeConfig, ModelConfig, RopeScaling
from engine.errors import ModelFormatError, UnsupportedArchitecture
from engine.loaders.gguf_header import check_tensor_extents, read_header
from engine.loaders.validate import check_tensors

# general.architecture -> our architecture name ("llama" becomes "mixtral" when it has experts).
GGUF_ARCHS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe",
              "qwen3moe": "qwen3_moe", "olmoe": "olmoe"}
PERMUTED_QK = ("llama", "mistral", "mixtral")  # converted with llama.cpp's Q/K row permutation
FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")

_RENAMES = [(re.compile(p), c) for p, c in [
    (r"token_embd\.weight", "embed.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "layers.{0}.attn_norm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"blk\.(\d+)\.attn_(q|k|v)\.(weight|bias)", "layers.{0}.attn.w{1}.{2}"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    (r"blk\.(\d+)\.attn_(q|k)_norm\.weight", "layers.{0}.attn.{1}_norm.weight"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.weight", "layers.{0}.mlp.w_{1}.weight"),
    (r"blk\.(\d+)\.ffn_gate_inp\.weight", "layers.{0}.mlp.router.weight"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight", "layers.{0}.mlp.w_{1}"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)_shexp\.weight", "layers.{0}.mlp.shared.w_{1}.weight"),
    (r"blk\.(\d+)\.ffn_gate_inp_shexp\.weight", "layers.{0}.mlp.shared_gate.weight"),
]]
_OLD_EXPERT = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight")  # early Mixtral GGUFs: one per expert


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (outermost first)
    kind: int  # ggml type id
    offset: int  # absolute byte offset in the file
    nbytes: int


def _open(path: Path) -> tuple[dict, list[_TensorInfo], np.memmap]:
    """Validated metadata, tensor descriptions and a read-only memory map of the whole file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    if size == 0:
        raise ModelFormatError(path, "empty file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        meta, infos = read_header(path, m)  # slicing an mmap copies, so no view outlives it
    check_tensor_extents(path, infos, size)
    tensors = []
    for name, dims, kind, offset in infos:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        n = int(np.prod(dims))
        tensors.append(_TensorInfo(name, tuple(int(d) for d in reversed(dims)), kind, offset,
                                   n // block * block_bytes))
    return meta, tensors, np.memmap(path, dtype=np.uint8, mode="r")


def read_metadata(path) -> dict:
    """The GGUF key/value metadata as plain Python values."""
    path = Path(path)
    return _open(path)[0]


def config_from_gguf(meta: dict, tensor_shapes: dict[str, tuple[int, ...]], path) -> ModelConfig:
    """Translate GGUF metadata (plus which tensors exist) into a ModelConfig."""
    gguf_arch = meta.get("general.architecture")
    if gguf_arch not in GGUF_ARCHS:
        raise UnsupportedArchitecture(path, str(gguf_arch), GGUF_ARCHS)
    arch = GGUF_ARCHS[gguf_arch]

    def get(key, default=None, required=False):
        full = f"{gguf_arch}.{key}"
        if full not in meta:
            if required:
                raise ModelFormatError(path, f"metadata {full!r} is missing")
            return default
        return meta[full]

    try:
        n_experts = int(get("expert_count", 0) or 0)
        if arch == "llama" and n_experts:
            arch = "mixtral"
        window = get("attention.sliding_window")
        if arch == "llama" and window:
            arch = "mistral"
        dim, n_heads = int(get("embedding_length", required=True)), int(get("attention.head_count", required=True))
        n_layers = int(get("block_count", required=True))
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else int(get("vocab_size", 0) or tensor_shapes["token_embd.weight"][0])
        moe = None
        if n_experts:
            moe = MoeConfig(
                n_experts, int(get("expert_used_count", required=True)),
                int(get("expert_feed_forward_length") or get("feed_forward_length", required=True)),
                router="topk_softmax" if arch == "mixtral" else "softmax_topk",
                norm_topk_prob=arch in ("mixtral", "qwen3_moe") or bool(get("expert_weights_norm", False)),
                shared_expert_hidden_dim=int(get("expert_shared_feed_forward_length", 0) or 0),
            )
        moe_layers = tuple(f"blk.{i}.ffn_gate_inp.weight" in tensor_shapes for i in range(n_layers))
        q_norm = tensor_shapes.get("blk.0.attn_q_norm.weight")
        head_dim = int(get("attention.key_length") or dim // n_heads)
        scaling_type = get("rope.scaling.type", "none")
        if scaling_type in (None, "none"):
            scaling = RopeScaling()
        else:
            scaling = RopeScaling(rope_type=scaling_type, factor=float(get("rope.scaling.factor", 1.0)),
                                  original_max_position=get("rope.scaling.original_context_length"))
        return ModelConfig(
            arch=arch, vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv") or n_heads), head_dim=head_dim,
            hidden_dim=int(get("feed_forward_length", 0) or 0),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
            max_seq_len=int(get("context_length", 2048)),
            tie_embeddings="output.weight" not in tensor_shapes,
            qkv_bias="blk.0.attn_q.bias" in tensor_shapes, o_bias="blk.0.attn_output.bias" in tensor_shapes,
            qk_norm="none" if q_norm is None else ("head" if q_norm[0] == head_dim else "full"),
            clip_qkv=get("attention.clamp_kqv"),
            sliding_windows=(int(window) if window else None,) * n_layers,
            moe=moe, moe_layers=moe_layers if moe else (),
        )
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise ModelFormatError(path, f"inconsistent GGUF metadata: {type(e).__name__}: {e}") from None


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order: per head it interleaves the two rotary halves; HF keeps them apart."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _to_tensor(t: _TensorInfo, data: np.memmap, path) -> torch.Tensor:
    import gguf

    kind = gguf.GGMLQuantizationType(t.kind).name
    if kind not in FLOAT_TYPES + QUANT_TYPES:
        raise ModelFormatError(path, f"tensor {t.name} has type {kind}, which Glassbox cannot read "
                                     f"(supported: {', '.join(FLOAT_TYPES + QUANT_TYPES)})")
    raw = data[t.offset:t.offset + t.nbytes]
    if kind == "F32":
        array = np.array(raw.view(np.float32))  # a copy: the map is read-only
    elif kind == "F16":
        array = raw.view(np.float16).astype(np.float32)
    elif kind == "BF16":  # bfloat16 is the top half of a float32
        array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:  # block-quantized: the gguf package's reference dequantizer, row by row of bytes
        rows = int(np.prod(t.shape[:-1]))
        array = gguf.quants.dequantize(np.asarray(raw).reshape(rows, -1), gguf.GGMLQuantizationType(t.kind))
    return torch.from_numpy(np.ascontiguousarray(array).reshape(t.shape))


def load_gguf(path, dtype: torch.dtype = torch.float32, progress=None):
    """-> (ModelConfig, canonical tensors, metadata). Raises ModelFormatError."""
    path = Path(path)
    meta, infos, data = _open(path)
    shapes = {t.name: t.shape for t in infos}
    config = config_from_gguf(meta, shapes, path)
    tensors: dict[str, torch.Tensor] = {}
    old_experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    total, total_bytes = len(infos), sum(t.nbytes for t in infos)
    done_bytes = 0
    for done, t in enumerate(infos, 1):
        try:
            tensor = _to_tensor(t, data, path).to(dtype)
        except (ValueError, TypeError) as e:
            raise ModelFormatError(path, f"tensor {t.name} is inconsistent: {e}") from None
        if m := _OLD_EXPERT.fullmatch(t.name):
            old_experts.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = tensor
        else:
            for pattern, target in _RENAMES:
                if m := pattern.fullmatch(t.name):
                    tensors[target.format(*m.groups())] = tensor
                    break
        done_bytes += t.nbytes
        if progress is not None:
            progress(done, total, done_bytes, total_bytes)
    for (layer, part), experts in old_experts.items():
        tensors[f"layers.{layer}.mlp.w_{part}"] = torch.stack([experts[e] for e in sorted(experts)])
    for i in range(config.n_layers):
        gate = tensors.get(f"layers.{i}.mlp.shared_gate.weight")
        if gate is not None and gate.dim() == 1:
            tensors[f"layers.{i}.mlp.shared_gate.weight"] = gate.unsqueeze(0)  # GGUF stores it as a vector
        if config.arch in PERMUTED_QK:
            for name, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
                for suffix in ("weight", "bias"):
                    key = f"layers.{i}.attn.{name}.{suffix}"
                    if key in tensors:
                        tensors[key] = unpermute_qk(tensors[key], heads)
    check_tensors(tensors, config, path)
    return config, tensors, meta
