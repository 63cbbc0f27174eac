"""Rotary position embeddings: inverse frequencies under each scaling rule, cos/sin tables, rotation.

Pure functions plus one small cache (RopeTable). HF's rotate-half layout (the two halves of a
head are the pair being rotated), which is what HF checkpoints expect; GGUF loaders un-permute
llama.cpp's interleaved Q/K rows to match it.
Shape legend: B batch, T tokens, H heads, d head_dim, F = d/2 frequencies.
"""
from __future__ import annotations

import math

import torch

from engine.config import ModelConfig, RopeScaling


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [F]


def _yarn(head_dim: int, theta: float, s: RopeScaling, original: int) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): interpolate low frequencies, keep high ones, ramp in between,
    and scale attention logits (through cos/sin) by a log-factor of the stretch."""

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.attention_factor is not None:
        attention = s.attention_factor
    elif s.mscale and s.mscale_all_dim:
        attention = mscale(s.factor, s.mscale) / mscale(s.factor, s.mscale_all_dim)
    else:
        attention = mscale(s.factor)

    def correction_dim(rotations: float) -> float:
        # the dimension whose wavelength fits `rotations` times in the original context
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolate = 1 - ramp  # 1 = keep the original frequency, 0 = fully interpolated
    base = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    inv_freq = (1.0 / (s.factor * base)) * (1 - extrapolate) + (1.0 / base) * extrapolate
    return inv_freq, float(attention)


def _llama3(head_dim: int, theta: float, s: RopeScaling, original: int) -> torch.Tensor:
    """Llama 3.1: divide long wavelengths by the factor, keep short ones, blend the middle band."""
    inv_freq = _default_inv_freq(head_dim, theta)
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original / s.low_freq_factor
    high_freq_wavelen = original / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, scaled)


def _longrope(head_dim: int, theta: float, s: RopeScaling, original: int,
              seq_len: int | None) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3): each frequency divided by its own searched factor, one list for sequences that
    fit in the trained context and another for longer ones; attention logits scaled (through cos/sin) by
    sqrt(1 + ln(stretch) / ln(original)) whichever list is in use."""
    factors = s.long_factor if seq_len and seq_len > original else s.short_factor
    if s.attention_factor is not None:
        attention = s.attention_factor
    else:
        attention = 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(original))
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta ** exponent), float(attention)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling, max_position: int,
                  seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [F] (float32) and the factor cos/sin are multiplied by.

    `max_position` is the config's max_position_embeddings; `seq_len` matters only for dynamic
    NTK, which re-derives the base from the current length once it exceeds the trained context, and
    for LongRoPE, which switches to its long factors then.
    """
    kind = scaling.rope_type
    original = scaling.original_max_position or max_position
    if kind == "default":
        return _default_inv_freq(head_dim, theta), 1.0
    if kind == "linear":  # position interpolation: positions are squeezed by the factor
        return _default_inv_freq(head_dim, theta) / scaling.factor, 1.0
    if kind == "dynamic":
        length = max(seq_len or original, original)
        base = theta * ((scaling.factor * length / original) - (scaling.factor - 1)) ** (head_dim / (head_dim - 2))
        return _default_inv_freq(head_dim, base), 1.0
    if kind == "yarn":
        return _yarn(head_dim, theta, scaling, original)
    if kind == "llama3":
        return _llama3(head_dim, theta, scaling, original), 1.0
    if kind == "longrope":
        return _longrope(head_dim, theta, scaling, original, seq_len)
    raise ValueError(f"unknown RoPE scaling {kind!r}")


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float):
    """cos, sin [..., T, d] in float32 for integer positions [..., T]."""
    freqs = positions.float().unsqueeze(-1) * inv_freq.to(positions.device)  # [..., T, F]
    emb = torch.cat((freqs, freqs), dim=-1)  # [..., T, d]: the same angle for both halves
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, d] by the angles in cos/sin (broadcast over heads). A table narrower than the
    head (partial rotary) rotates the leading dims and passes the rest through."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]), dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def sign_folded_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated, for apply_rope_folded (built once per step, not per layer)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope_folded(x: torch.Tensor, cos: torch.Tensor, folded_sin: torch.Tensor) -> torch.Tensor:
    """apply_rope for a full-width table in 4 ops instead of 7: the rotate-half's negation moved into the table
    (sign_folded_sin) and its swap of halves done by one roll. Bit-identical: (-a) * s == a * (-s) exactly."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * folded_sin


class RopeTable:
    """Caches inverse frequencies; recomputes them per call only for dynamic NTK, whose base
    depends on how long the sequence has grown (length = largest position + 1, as HF does), and picks
    LongRoPE's short or long set per sequence by the same length."""

    def __init__(self, config: ModelConfig, device="cpu"):
        # head_dim here is the rotated width: the whole head unless the model rotates part of it
        self.head_dim, self.theta = config.rotary_dim, config.rope_theta
        self.scaling, self.max_position = config.rope_scaling, config.max_seq_len
        self.dynamic = self.scaling.rope_type == "dynamic"
        with torch.device("cpu"):  # real numbers even while the model is being built on the meta device
            inv_freq, self.attention_scaling = rope_inv_freq(self.head_dim, self.theta, self.scaling,
                                                             self.max_position)
        self.inv_freq = inv_freq.to(device)
        self.long_inv_freq = None  # LongRoPE's second set, for sequences past the original context
        if self.scaling.rope_type == "longrope":
            self.original = self.scaling.original_max_position or self.max_position
            with torch.device("cpu"):
                long, _ = rope_inv_freq(self.head_dim, self.theta, self.scaling, self.max_position, self.original + 1)
            self.long_inv_freq = long.to(device)
        # Gemma 3: the sliding-window layers rotate with their own base and no scaling.
        self.local_inv_freq = None
        if config.local_rope_theta is not None:
            with torch.device("cpu"):
                local, _ = rope_inv_freq(self.head_dim, config.local_rope_theta, RopeScaling(), self.max_position)
            self.local_inv_freq = local.to(device)

    def local_cos_sin(self, positions: torch.Tensor):
        """The sliding-window layers' table, or None when they use the common one (cos_sin)."""
        if self.local_inv_freq is None:
            return None
        return rope_cos_sin(positions, self.local_inv_freq, 1.0)

    def long_from_start(self, prompt_len: int) -> bool:
        """LongRoPE: a prompt longer than the original context is rotated with the long factors from its first
        token, as one forward over it would be, however it is cut into prefill chunks."""
        return self.long_inv_freq is not None and prompt_len > self.original

    def cos_sin(self, positions: torch.Tensor, rope_long: torch.Tensor | None = None):
        """cos, sin [..., T, d] for positions [..., T]; rope_long [...] (bool) forces LongRoPE's long factors
        on those rows (a sequence whose prompt was already past the original context)."""
        inv_freq = self.inv_freq
        if self.dynamic:
            seq_len = int(positions.max()) + 1
            inv_freq, _ = rope_inv_freq(self.head_dim, self.theta, self.scaling, self.max_position, seq_len)
            inv_freq = inv_freq.to(positions.device)
        if self.long_inv_freq is not None:
            # Per sequence (row), as transformers does per forward: the long factors once the sequence's
            # length (largest position + 1) passes the original context. On the device: no host sync.
            longer = positions.amax(-1, keepdim=True) + 1 > self.original  # [..., 1]
            if rope_long is not None:
                longer = longer | rope_long.reshape(longer.shape)
            longer = longer.unsqueeze(-1)  # [..., 1, 1]
            inv_freq = torch.where(longer, self.long_inv_freq.to(positions.device),
                                   inv_freq.to(positions.device))  # [..., 1, F]
        return rope_cos_sin(positions, inv_freq, self.attention_scaling)
