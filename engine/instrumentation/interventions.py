"""Interventions as hooks on the model: a query head scaled where its output enters `attn.wo`, an MoE
expert removed from routing or scaled, a layer's MLP scaled. The model code never knows: hooks go on
and come off whole. Installed persistently (generation, Engine.set_interventions) or for one replay
(`applied`); `as_loaded` suspends the persistent ones so a replay can see the model as it was loaded.
Shape legend: B batch, T tokens, H query heads, d head_dim, E experts.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from engine.records import Intervention

_INSTALLED = "installed_interventions"  # attribute on the model: the persistent handles, oldest first


def check_interventions(model, interventions) -> None:
    """A clear ValueError for anything the model does not have."""
    config = model.config
    experts_off: dict[int, int] = {}
    for change in interventions:
        if not isinstance(change, Intervention):
            raise ValueError(f"not an Intervention: {change!r}")
        if change.layer >= config.n_layers:
            raise ValueError(f"{change.label}: the model has layers 0..{config.n_layers - 1}")
        if change.kind == "head" and change.index >= config.n_heads:
            raise ValueError(f"{change.label}: layer {change.layer} has heads 0..{config.n_heads - 1}")
        if change.kind == "expert":
            if not config.moe_layers[change.layer]:
                raise ValueError(f"{change.label}: layer {change.layer} is dense, it has no experts")
            if change.index >= config.moe.n_experts:
                raise ValueError(f"{change.label}: layer {change.layer} has experts 0..{config.moe.n_experts - 1}")
            if change.scale == 0:
                experts_off[change.layer] = experts_off.get(change.layer, 0) + 1
    for layer, n in experts_off.items():
        if n >= config.moe.n_experts:  # the router would have nothing left to choose from
            raise ValueError(f"layer {layer}: at least one expert must stay in routing")


class InterventionHandle:
    """Hooks for one set of interventions; `remove()` takes them all off (idempotent)."""

    def __init__(self, model, interventions: tuple[Intervention, ...]):
        self.model, self.interventions = model, tuple(interventions)
        self._undo: list = []

    def remove(self) -> None:
        self._detach()
        handles = getattr(self.model, _INSTALLED, [])
        if self in handles:
            handles.remove(self)

    # -- hooks on, hooks off ---------------------------------------------------------------------
    def _attach(self) -> None:
        assert not self._undo, "already attached"
        heads: dict[int, list[Intervention]] = {}
        experts: dict[int, list[Intervention]] = {}
        for change in self.interventions:
            {"head": heads, "expert": experts}.get(change.kind, {}).setdefault(change.layer, []).append(change)
            if change.kind == "mlp":
                scale = change.scale
                hook = self.model.layers[change.layer].mlp.register_forward_hook(
                    lambda module, args, out, scale=scale: out * scale)
                self._undo.append(hook.remove)
        for layer, changes in heads.items():
            self._attach_heads(self.model.layers[layer].attn, changes)
        for layer, changes in experts.items():
            self._attach_experts(self.model.layers[layer].mlp, changes)

    def _attach_heads(self, attn, changes) -> None:
        d = attn.head_dim
        weight = self.model.embed.weight
        scales = torch.ones(attn.n_heads * d, dtype=weight.dtype, device=weight.device)  # [H*d]
        for change in changes:
            scales[change.index * d:(change.index + 1) * d] *= change.scale

        def scale_heads(module, args):
            # wo's input is the heads' outputs side by side, head h at [h*d, (h+1)*d): [B, T, H*d].
            return (args[0] * scales,) + args[1:]

        self._undo.append(attn.wo.register_forward_pre_hook(scale_heads).remove)

    def _attach_experts(self, moe, changes) -> None:
        removed = [c.index for c in changes if c.scale == 0]
        if removed:
            def mask_router(module, args, logits):
                # -inf before the router's softmax: the expert gets probability 0 and top-k picks among the
                # others, renormalised exactly as this architecture's routing renormalises (engine/layers/moe.py).
                logits = logits.clone()
                logits[..., removed] = float("-inf")  # [N, E]
                return logits

            self._undo.append(moe.router.register_forward_hook(mask_router).remove)
        factors: dict[int, float] = {}
        for change in changes:
            if change.scale != 0:
                factors[change.index] = factors.get(change.index, 1.0) * change.scale
        if factors:
            # An instance attribute shadows the class's expert_mlp (float or quantized) while installed:
            # no cost in SparseMoE when nothing is scaled, and no change to the layer's code.
            previous = moe.__dict__.get("expert_mlp")
            inner = moe.expert_mlp

            def scaled_expert(e: int, h: torch.Tensor) -> torch.Tensor:
                out = inner(e, h)  # [n, D]
                return out * factors[e] if e in factors else out

            moe.expert_mlp = scaled_expert
            self._undo.append(lambda: _restore_expert_mlp(moe, previous))

    def _detach(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _restore_expert_mlp(moe, previous) -> None:
    if previous is None:
        moe.__dict__.pop("expert_mlp", None)
    else:
        moe.expert_mlp = previous


def install_interventions(model, interventions) -> InterventionHandle:
    """Apply `interventions` to `model` until the returned handle's `remove()`; ValueError for a layer, head or
    expert the model does not have."""
    interventions = tuple(interventions)
    check_interventions(model, interventions)
    handle = InterventionHandle(model, interventions)
    handle._attach()
    handles = getattr(model, _INSTALLED, None)
    if handles is None:
        handles = []
        setattr(model, _INSTALLED, handles)
    handles.append(handle)
    return handle


def installed(model) -> tuple[Intervention, ...]:
    """Every intervention installed persistently on `model` (empty: the model as loaded)."""
    return tuple(c for handle in getattr(model, _INSTALLED, ()) for c in handle.interventions)


@contextmanager
def as_loaded(model):
    """The model without its persistent interventions for the duration (they come back after, even on error)."""
    handles = list(getattr(model, _INSTALLED, ()))
    for handle in handles:
        handle._detach()
    try:
        yield model
    finally:
        for handle in handles:
            handle._attach()


@contextmanager
def applied(model, interventions):
    """The model as loaded plus `interventions` only, for the duration of a replay."""
    with as_loaded(model):
        handle = install_interventions(model, interventions) if interventions else None
        try:
            yield model
        finally:
            if handle is not None:
                handle.remove()
