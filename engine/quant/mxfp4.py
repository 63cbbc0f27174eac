"""MXFP4 (OCP microscaling FP4), as gpt-oss checkpoints store their experts: kept packed, dequantized
one expert at a time when a token is routed to it. Owns the format and the packed MoE module; the
checkpoint's names are read in engine/loaders/gpt_oss.py.

Layout of one weight [R, C] (HF orientation, rows = outputs): `blocks` uint8 [R, C/32, 16] holds two
FP4 E2M1 codes per byte, the low nibble first (value 2j is byte j's low half, value 2j+1 its high half);
`scales` uint8 [R, C/32] is one E8M0 exponent per 32 values: w = fp4(code) * 2^(scale - 127).
Experts stack a leading E dimension on both. E2M1 codes: bit 3 the sign, then 0, .5, 1, 1.5, 2, 3, 4, 6.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.moe import SparseMoE
from engine.quant.modules import QuantSparseMoE

BLOCK = 32  # values per shared exponent
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(byte -> its two bf16 values as one int32 [256], low nibble first; scale byte -> 2^(s - 127) in bf16)."""
    lut = torch.tensor(E2M1, dtype=torch.bfloat16)
    pairs = torch.stack((lut.repeat(16), lut.repeat_interleave(16)), dim=-1)  # byte b: (lut[b & 15], lut[b >> 4])
    powers = torch.exp2(torch.arange(256, dtype=torch.float32) - 127.0).to(torch.bfloat16)
    return pairs.contiguous().view(torch.int32).view(256).to(device), powers.to(device)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks uint8 [..., G, 16] and scales uint8 [..., G] -> [..., G*32] in dtype. Computed in bf16, which
    is exact (an E2M1 value has two significant bits, a scale is a power of two, and bf16 has fp32's
    exponent range) and moves half the bytes of fp32. One 32-bit lookup per byte yields both of its values
    (measured on a 2880x2880 matrix, 1 thread: 16 ms, against 33 for a [256, 2] row gather and ~130 for
    gathering each nibble in fp32)."""
    pairs, powers = _tables(blocks.device)
    values = torch.index_select(pairs, 0, blocks.reshape(-1).int()).view(torch.bfloat16)  # [n bytes * 2]
    values = values.view(*scales.shape, 32) * torch.index_select(powers, 0, scales.reshape(-1).int()).view(
        *scales.shape, 1)  # [..., G, 32]
    return values.flatten(-2).to(dtype)  # [..., G*32]


class PackedMxfp4:
    """One stacked expert weight [E, R, C] kept as MXFP4 blocks until an expert is used."""

    kind = "mxfp4"

    def __init__(self, blocks: torch.Tensor, scales: torch.Tensor):
        if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise ValueError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
        if blocks.dim() != 4 or blocks.shape[-1] != BLOCK // 2 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
            raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)} "
                             f"(expected [E, R, G, {BLOCK // 2}] and [E, R, G])")
        if bool((scales == 255).any()):  # E8M0's NaN code: no real weight has it
            raise ValueError("MXFP4 scales hold 255 (NaN): the tensor is corrupt")
        self.blocks, self.scales = blocks.contiguous(), scales.contiguous()
        E, R, G, _ = blocks.shape
        self.shape = (E, R, G * BLOCK)  # what validate.check_tensors compares, as for a float tensor

    @property
    def nbytes(self) -> int:
        return self.blocks.numel() + self.scales.numel()

    def rows(self, index) -> "PackedMxfp4":
        """The same experts keeping only rows `index` (a slice): whole rows keep their blocks."""
        return PackedMxfp4(self.blocks[:, index], self.scales[:, index])

    def to(self, device) -> "PackedMxfp4":
        return PackedMxfp4(self.blocks.to(device), self.scales.to(device))

    def expert(self, e: int, dtype: torch.dtype, device=None) -> torch.Tensor:
        """Expert e's weight [R, C] in dtype on `device` (the packed bytes travel, not the floats)."""
        blocks, scales = self.blocks[e], self.scales[e]
        if device is not None:
            blocks, scales = blocks.to(device, non_blocking=True), scales.to(device, non_blocking=True)
        return dequantize_mxfp4(blocks, scales, dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_mxfp4(self.blocks, self.scales, dtype)  # [E, R, C]


class Mxfp4SparseMoE(QuantSparseMoE):
    """SparseMoE whose expert weights stay MXFP4: each routed expert is dequantized for the step that uses
    it (memory: 4.25 bits a weight instead of 16 or 32; cost: one dequantization per used expert per step)."""

    @classmethod
    def from_packed(cls, moe: SparseMoE, gate: PackedMxfp4, up: PackedMxfp4, down: PackedMxfp4) -> "Mxfp4SparseMoE":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.moe, new.router, new.shared, new.shared_gate = moe.moe, moe.router, moe.shared, moe.shared_gate
        new.b_gate, new.b_up, new.b_down = moe.b_gate, moe.b_up, moe.b_down
        new.gate, new.up, new.down = gate, up, down
        new.offloaded = False
        return new

    def expert_mlp(self, e: int, h: torch.Tensor) -> torch.Tensor:
        gate, up, down = (w.expert(e, h.dtype, h.device) for w in (self.gate, self.up, self.down))
        return self.down_bias(e, self.glu(e, h @ gate.T, h @ up.T) @ down.T)

    def quant_weights(self) -> list:
        return [self.gate, self.up, self.down]


def install_mxfp4(model, tensors: dict[str, PackedMxfp4], device) -> None:
    """Replace each MoE layer whose experts arrived packed (layers.{i}.mlp.w_gate / w_up / w_down) by an
    Mxfp4SparseMoE holding them on `device`."""
    layers = sorted({int(name.split(".")[1]) for name in tensors})
    for i in layers:
        parts = [tensors.get(f"layers.{i}.mlp.{p}") for p in ("w_gate", "w_up", "w_down")]
        if any(p is None for p in parts):
            raise ValueError(f"layer {i}: MXFP4 experts must come packed all three (gate, up, down) or not at all")
        block = model.layers[i]
        block.mlp = Mxfp4SparseMoE.from_packed(block.mlp, *(p.to(device) for p in parts))
