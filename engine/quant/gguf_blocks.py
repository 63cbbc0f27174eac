"""GGUF Q8_0 / Q4_0 / Q4_1 blocks -> our Int8Weight / Int4Weight, without a float copy.

Block layouts (ggml-common.h), 32 values per block, rows made of whole blocks:
  Q8_0: fp16 d, int8 qs[32]                       w = qs[j] * d
  Q4_0: fp16 d, uint8 qs[16]                      w = (nibble - 8) * d
  Q4_1: fp16 d, fp16 m, uint8 qs[16]              w = nibble * d + m
  nibbles: value j < 16 is the low half of qs[j], value j + 16 the high half.
Only the scales are converted; the quantized values keep their bits.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.quant.int4 import Int4Weight
from engine.quant.int8 import Int8Weight

BLOCK = 32
_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
PACKED_KINDS = tuple(_BYTES)


class PackedGGUF:
    """A quantized GGUF tensor kept as its raw blocks until the model is built."""

    def __init__(self, kind: str, shape: tuple[int, int], raw: np.ndarray):
        if kind not in _BYTES:
            raise ValueError(f"{kind} cannot stay packed")
        self.kind, self.shape = kind, tuple(shape)
        N, K = self.shape
        self.raw = np.array(raw, dtype=np.uint8).reshape(N, K // BLOCK, _BYTES[kind])  # a copy: the map closes

    def scales_finite(self) -> bool:
        scales = self.raw[..., :4 if self.kind == "Q4_1" else 2].copy().view(np.float16)
        return bool(np.isfinite(scales).all())

    def permute_rows(self, order: torch.Tensor) -> "PackedGGUF":
        self.raw = self.raw[order.numpy()]
        return self

    def to_weight(self, keep_rows: bool = False) -> Int8Weight | Int4Weight:
        N, K = self.shape
        d = torch.from_numpy(self.raw[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))  # [N, G]
        if self.kind == "Q8_0":
            q = torch.from_numpy(self.raw[..., 2:].copy().view(np.int8)).reshape(N, K)
            return Int8Weight(q, d, group_size=BLOCK)
        qs = self.raw[..., 4:] if self.kind == "Q4_1" else self.raw[..., 2:]  # [N, G, 16]
        nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(N, K)
        q = torch.from_numpy(nibbles.astype(np.uint8))
        if self.kind == "Q4_1":
            m = torch.from_numpy(self.raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
            zero = m + 8 * d
        else:
            zero = torch.zeros_like(d)
        return Int4Weight(q, d, zero, BLOCK, keep_rows=keep_rows)

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K], computed as ggml does (d * q + m in fp32): the reference the packed
        kernels are checked against, and the path for re-quantizing to another mode."""
        N, K = self.shape
        d = self.raw[..., :2].copy().view(np.float16).astype(np.float32)  # [N, G, 1]
        if self.kind == "Q8_0":
            values = self.raw[..., 2:].copy().view(np.int8).astype(np.float32) * d
        else:
            qs = self.raw[..., 4:] if self.kind == "Q4_1" else self.raw[..., 2:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
            if self.kind == "Q4_1":
                values = d * q + self.raw[..., 2:4].copy().view(np.float16).astype(np.float32)
            else:
                values = d * (q - 8)
        return torch.from_numpy(values.reshape(N, K))

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes
