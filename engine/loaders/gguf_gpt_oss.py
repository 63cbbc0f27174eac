"""gpt-oss in GGUF, as llama.cpp's converter writes it and its graph runs it: the tensor names that differ
from the shared table, what llama.cpp hard-codes instead of storing (the clamped SwiGLU's 1.702 / 7.0,
even layers sliding), and its MXFP4 block layout turned into the checkpoint's (engine/quant/mxfp4.py).

llama.cpp's MXFP4 block (17 bytes per 32 values): one E8M0 scale byte, then 16 bytes where value j is the
low nibble of byte j and value j + 16 its high nibble. The released checkpoints pair values 2j, 2j + 1
in byte j instead; the codes and scales themselves are the same.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from engine.config import MoeConfig, RopeScaling
from engine.quant.mxfp4 import PackedMxfp4

# First match wins, ahead of gguf_file's shared table: gpt-oss's post_attention_norm is the MLP's input
# norm (the HF name's meaning), not Gemma's norm after attention.
RENAMES = [(re.compile(p), c) for p, c in [
    (r"blk\.(\d+)\.attn_sinks(?:\.weight)?", "layers.{0}.attn.sinks"),
    (r"blk\.(\d+)\.post_attention_norm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"blk\.(\d+)\.ffn_gate_inp\.bias", "layers.{0}.mlp.router.bias"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.bias", "layers.{0}.mlp.b_{1}"),
]]
SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0  # llama.cpp's gpt-oss graph passes these as constants


def gpt_oss_fields(n_layers: int, window: int, moe: MoeConfig | None, rope_scaling: RopeScaling) -> dict:
    """ModelConfig fields the metadata implies for gpt-oss beyond the shared keys."""
    if moe is None:
        raise ValueError("a gpt-oss GGUF without experts (no expert_count / ffn_gate_inp)")
    moe = dataclasses.replace(moe, router="topk_softmax", norm_topk_prob=True, router_bias=True, expert_bias=True,
                              swiglu_limit=SWIGLU_LIMIT, swiglu_alpha=SWIGLU_ALPHA)
    # OpenAI's YaRN does not round the ramp's ends (transformers' gpt-oss config says truncate: false)
    return dict(attn_sinks=True, moe=moe, moe_layers=(True,) * n_layers,
                sliding_windows=tuple(window if i % 2 == 0 and window else None for i in range(n_layers)),
                rope_scaling=dataclasses.replace(rope_scaling, truncate=False))


def mxfp4_from_gguf(raw: np.ndarray, shape: tuple[int, ...]) -> PackedMxfp4:
    """A GGUF MXFP4 tensor's bytes (torch-order `shape` [E, R, C]) -> PackedMxfp4, without a float copy."""
    *outer, C = shape
    if len(outer) != 2:
        raise ValueError(f"MXFP4 experts must be [E, R, C], got {tuple(shape)}")
    blocks = np.asarray(raw, dtype=np.uint8).reshape(*outer, C // 32, 17)
    scales = blocks[..., 0]
    qs = blocks[..., 1:]  # [E, R, G, 16]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [E, R, G, 32] in value order
    paired = codes[..., 0::2] | (codes[..., 1::2] << 4)  # value 2j low, 2j + 1 high
    return PackedMxfp4(torch.from_numpy(np.ascontiguousarray(paired)), torch.from_numpy(np.ascontiguousarray(scales)))
