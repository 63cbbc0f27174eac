"""LoRA adapters as the window and the CLI see them: what one loaded adapter is and how it is set
(AdapterFacts), and the selected token's next-token distribution with and without the adapters
(AdapterComparisonView). Plain frozen values: no torch, no Qt."""
from __future__ import annotations

from dataclasses import dataclass


def adapter_spec(text: str) -> tuple[str, float]:
    """A command line's 'DIR' or 'DIR:SCALE' -> (DIR, SCALE) (LoadOptions.adapters); a colon not followed by a
    number belongs to the path."""
    folder, _, scale = text.rpartition(":")
    try:
        return (folder, float(scale)) if folder else (text, 1.0)
    except ValueError:
        return text, 1.0


@dataclass(frozen=True, slots=True)
class AdapterFacts:
    """One adapter loaded beside the base weights (Engine.add_adapter / adapters)."""

    name: str  # unique among the loaded adapters: the folder's name, "-2", "-3"... when taken
    path: str
    rank: int  # the config's r (rank_pattern may give some modules another)
    alpha: float  # lora_alpha
    rslora: bool  # scaling alpha / sqrt(r) instead of alpha / r
    targets: tuple[str, ...]  # the HF module names it changes: "q_proj", "v_proj", ...
    layers: tuple[int, ...]  # the layers it touches
    parameters: int  # A and B values it holds
    enabled: bool
    scale: float  # the user's multiplier on top of the adapter's own alpha / r (1: as trained)

    @property
    def label(self) -> str:
        """'style-lora ×0.5' (off: 'style-lora (off)'), as the status line and the comparison name it."""
        return f"{self.name} ×{self.scale:g}" if self.enabled else f"{self.name} (off)"


@dataclass(frozen=True, slots=True)
class AdapterComparisonView:
    """The next-token distribution after a context with the adapters (as enabled and scaled now) and
    without any, both by replay of the same tokens (Engine.adapter_comparison)."""

    adapters: tuple[str, ...]  # the labels of the adapters applied ("name ×scale")
    position: int  # the context's length: the distribution is for the token at this position
    target_id: int  # the token the model chose there
    token_ids: tuple[int, ...]  # the union of both top-N, ordered by the probability without adapters
    token_texts: tuple[str, ...]
    base_probs: tuple[float, ...]  # without the adapters, aligned with token_ids
    probs: tuple[float, ...]  # with them
    kl: float  # KL(without ‖ with) over the whole vocabulary, nats
    top1_same: bool  # both rank the same token first
