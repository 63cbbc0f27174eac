"""gpt-oss's tensor names in an HF directory -> canonical ones (docs/weights.md). Called by
safetensors_dir.hf_state_to_canonical for model_type gpt_oss; knows nothing of other architectures.

The experts come fused, in one of two forms:
  float (transformers' save_pretrained): gate_up_proj [E, D, 2I], down_proj [E, I, D] (input-major:
      the transpose of ours);
  MXFP4 (the released checkpoints): gate_up_proj_blocks [E, 2I, D/32, 16] + _scales [E, 2I, D/32] and
      down_proj_blocks [E, D, I/32, 16] + _scales (output-major, as ours; engine/quant/mxfp4.py).
Either way gate and up are *interleaved* along 2I (gate j is row 2j, up j row 2j+1), biases included.
"""
from __future__ import annotations

import re

import torch

from engine.quant.mxfp4 import PackedMxfp4

_NAME = re.compile(r"model\.layers\.(\d+)\.(self_attn\.sinks|mlp\.router\.(?:weight|bias)|"
                   r"mlp\.experts\.(?:gate_up_proj|down_proj)(?:_bias|_blocks|_scales)?)")
_SIMPLE = {"self_attn.sinks": "attn.sinks", "mlp.router.weight": "mlp.router.weight",
           "mlp.router.bias": "mlp.router.bias", "mlp.experts.down_proj_bias": "mlp.b_down"}


def gpt_oss_to_canonical(state: dict, keep_packed: bool, dtype: torch.dtype = torch.float32) -> dict:
    """Take gpt-oss's own tensors out of `state` (the rest is left for the shared renames) and return them
    under canonical names. MXFP4 experts come back as PackedMxfp4 with keep_packed, else dequantized to
    dtype. Raises ValueError on a half-present or mis-shaped MXFP4 pair."""
    out: dict = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (layer, "gate_up"|"down") -> suffix -> tensor
    for name in [n for n in state if _NAME.fullmatch(n)]:
        layer, what = _NAME.fullmatch(name).groups()
        tensor = state.pop(name)
        if what in _SIMPLE:
            out[f"layers.{layer}.{_SIMPLE[what]}"] = tensor
        elif what == "mlp.experts.gate_up_proj_bias":  # [E, 2I], interleaved
            out[f"layers.{layer}.mlp.b_gate"] = tensor[:, 0::2].contiguous()
            out[f"layers.{layer}.mlp.b_up"] = tensor[:, 1::2].contiguous()
        else:
            proj, _, suffix = what.removeprefix("mlp.experts.").partition("_proj")
            parts.setdefault((layer, proj), {})[suffix.lstrip("_") or "float"] = tensor
    for (layer, proj), got in parts.items():
        p = f"layers.{layer}.mlp."
        if "float" in got:
            w = got["float"].transpose(1, 2)  # [E, 2I, D] or [E, D, I]: outputs first, as ours
        elif set(got) == {"blocks", "scales"}:
            w = PackedMxfp4(got["blocks"], got["scales"])
            if not keep_packed:
                w = w.dequantize(dtype)
        else:
            raise ValueError(f"layer {layer}: {proj}_proj has {sorted(got)} but MXFP4 needs both blocks and scales")
        if proj == "down":
            out[p + "w_down"] = w if isinstance(w, PackedMxfp4) else w.contiguous()
        elif isinstance(w, PackedMxfp4):
            out[p + "w_gate"], out[p + "w_up"] = w.rows(slice(0, None, 2)), w.rows(slice(1, None, 2))
        else:
            out[p + "w_gate"], out[p + "w_up"] = w[:, 0::2].contiguous(), w[:, 1::2].contiguous()
    return out
