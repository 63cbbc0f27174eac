"""Weight-only quantization as module swaps (the model code stays float-only).

Modes: none | int8 (symmetric, per output channel) | int4-g32 / int4-g64 / int4-g128 (group-wise
min/max). Every linear layer is swapped: attention, MLP, each expert, a shared expert; routers
and norms stay float (tiny, and routing decisions are sensitive). The LM head and the embedding
are quantized too unless `head=False`; a *tied* embedding/LM head uses int8 even in int4 modes,
because one int8 table serves both the row lookup and the matmul kernel, which is smaller than
int4's two layouts and more accurate.

GGUF Q8_0 / Q4_0 / Q4_1 tensors can skip float altogether: see `build_model` and gguf_blocks.py.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.moe import SparseMoE
from engine.quant.concat import fuse_projections
from engine.quant.gguf_blocks import PACKED_KINDS, PackedGGUF
from engine.quant.int4 import GROUP_SIZES, Int4Weight
from engine.quant.int8 import Int8Weight
from engine.quant.modules import QuantEmbedding, QuantLinear, QuantSparseMoE
from engine.quant.mxfp4 import PackedMxfp4, install_mxfp4

MODES = ("none", "int8") + tuple(f"int4-g{g}" for g in GROUP_SIZES)
LOAD_MODES = ("auto",) + MODES  # auto: GGUF Q8_0/Q4_0/Q4_1 stay packed, everything else float

__all__ = ["MODES", "LOAD_MODES", "PACKED_KINDS", "PackedGGUF", "quantize_model", "build_model", "make_weight",
           "check_mode", "Int8Weight", "Int4Weight", "QuantLinear", "QuantEmbedding"]


def check_mode(mode: str, allowed=LOAD_MODES) -> str:
    if mode not in allowed:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(allowed)}")
    return mode


def compute_dtype_for(device, dtype: torch.dtype, exact: bool = False) -> torch.dtype:
    """The activations' dtype for quantized matmuls. PyTorch's CPU weight-only kernels are
    vectorized for bf16 activations and scalar for fp32 (10x slower on an AVX2 CPU, measured in
    docs/benchmarks.md), so an fp32 model on the CPU feeds them bf16 unless asked to be exact."""
    if torch.device(device).type == "cpu" and dtype == torch.float32 and not exact:
        return torch.bfloat16
    return dtype


def make_weight(w: torch.Tensor, mode: str, keep_rows: bool = False,
                compute_dtype: torch.dtype | None = None) -> Int8Weight | Int4Weight:
    """Quantize one float weight [N, K]; it lives on w's device and takes activations of
    compute_dtype (default: w's dtype)."""
    if mode == "int8":
        q = Int8Weight.quantize(w)
    else:
        q = Int4Weight.quantize(w, int(mode.removeprefix("int4-g")), keep_rows=keep_rows)
    return q.to(w.device, compute_dtype or w.dtype)


def _swap_linears(parent: nn.Module, names, mode: str, compute) -> None:
    for name in names:
        linear = getattr(parent, name)
        if isinstance(linear, nn.Linear):
            setattr(parent, name, QuantLinear(make_weight(linear.weight, mode, compute_dtype=compute), linear.bias))


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, head: bool = True, exact: bool = False) -> nn.Module:
    """Swap model's float linears for quantized ones in place (layers already quantized, e.g. packed
    from a GGUF, are left as they are). exact: keep activations in the model's dtype (see
    compute_dtype_for). Returns the model."""
    check_mode(mode, MODES)
    if mode == "none":
        return model
    dtype, device = model.embed.weight.dtype, model.embed.weight.device
    compute = compute_dtype_for(device, dtype, exact)
    for block in model.layers:
        # fused or not; MLA lists its own projections (MLAttention.LINEARS)
        _swap_linears(block.attn, getattr(block.attn, "LINEARS", ("wq", "wk", "wv", "wqkv", "wo")), mode, compute)
        mlp = block.mlp
        if isinstance(mlp, SparseMoE) and not isinstance(mlp, QuantSparseMoE):
            block.mlp = QuantSparseMoE.from_float(mlp, lambda w: make_weight(w, mode, compute_dtype=compute))
            mlp = block.mlp
        if getattr(mlp, "shared", None) is not None:
            _swap_linears(mlp.shared, ("w_gate", "w_up", "w_gate_up", "w_down"), mode, compute)
        elif not isinstance(mlp, SparseMoE):
            _swap_linears(mlp, ("w_gate", "w_up", "w_gate_up", "w_down"), mode, compute)
    if head:
        if model.lm_head is None and isinstance(model.embed, nn.Embedding):  # tied: one int8 table for both
            table = make_weight(model.embed.weight, "int8", compute_dtype=compute)
            model.embed, model.lm_head = QuantEmbedding(table, dtype), QuantLinear(table)
        else:
            if isinstance(model.lm_head, nn.Linear):
                model.lm_head = QuantLinear(make_weight(model.lm_head.weight, mode, compute_dtype=compute),
                                            model.lm_head.bias)
            if isinstance(model.embed, nn.Embedding):
                model.embed = QuantEmbedding(make_weight(model.embed.weight, "int8", compute_dtype=compute), dtype)
    return model


def build_model(config, tensors: dict, device, dtype, mode: str = "auto", head: bool = True, exact: bool = False,
                fuse: bool = True):
    """The Decoder for loaded tensors. Values that are PackedGGUF (mode 'auto' on a GGUF) become
    quantized modules straight from their blocks; the rest is float, then quantized per `mode`.
    fuse: stack q/k/v and gate/up weights into one matmul each (same outputs, fewer calls)."""
    compute = compute_dtype_for(device, dtype, exact)
    from engine.model import Decoder

    check_mode(mode)
    # MXFP4 experts (gpt-oss) stay packed in mode 'auto' (engine/quant/mxfp4.py); any other mode starts from floats
    mxfp4 = {name: t for name, t in tensors.items() if isinstance(t, PackedMxfp4)}
    if mode != "auto":
        tensors, mxfp4 = {**tensors, **{name: t.dequantize(dtype) for name, t in mxfp4.items()}}, {}
    packed = {name: t for name, t in tensors.items() if isinstance(t, PackedGGUF)}
    floats = {name: t for name, t in tensors.items() if not isinstance(t, (PackedGGUF, PackedMxfp4))}
    model = Decoder.from_tensors(config, floats, device=device, dtype=dtype, packed=set(packed) | set(mxfp4))
    for name, blocks in packed.items():
        _install_packed(model, name, blocks, device, dtype, compute)
    install_mxfp4(model, mxfp4, device)
    if any(p.is_meta for p in model.parameters()):
        missing = [n for n, p in model.named_parameters() if p.is_meta]
        raise RuntimeError(f"no weights were installed for {missing[:3]}")
    if mode not in ("auto", "none"):
        quantize_model(model, mode, head=head, exact=exact)
    if fuse:
        fuse_projections(model)
    _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Unpacking and repacking leave ~300 MB of freed heap that glibc keeps mapped: hand it back to the OS,
    so the app's resident memory is weights + runtime rather than the loader's high-water mark."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def _install_packed(model, name: str, blocks: PackedGGUF, device, dtype, compute) -> None:
    module_path = name.removesuffix(".weight")
    if module_path == "embed":
        table = blocks.to_weight(keep_rows=True).to(device, compute)
        model.embed = QuantEmbedding(table, dtype)
        if model.config.tie_embeddings:
            model.lm_head = QuantLinear(table)
        return
    *parents, leaf = module_path.split(".")
    parent = model.get_submodule(".".join(parents))
    old = getattr(parent, leaf)
    bias = old.bias if isinstance(old, nn.Linear) and old.bias is not None and not old.bias.is_meta else None
    setattr(parent, leaf, QuantLinear(blocks.to_weight().to(device, compute), bias))


def dequantized_tensors(tensors: dict, mode: str) -> dict:
    """Float tensors as quantize_model would leave them, dequantized: every 2-D weight by `mode`,
    a tied embedding / LM head table (`embed.weight`) by int8. A float model built from them
    computes what the exact quantized path computes, with fast fp32 matmuls (quality figures)."""
    def round_trip(w, how):
        if how == "int8":
            return Int8Weight.quantize(w).dequantize().float()
        return Int4Weight.quantize(w, int(how.removeprefix("int4-g")), keep_rows=True).dequantize().float()

    check_mode(mode, MODES)
    if mode == "none":
        return dict(tensors)
    return {n: round_trip(t, "int8" if n == "embed.weight" else mode) if t.dim() == 2 else t
            for n, t in tensors.items()}
