"""LoRA adapters at run time: the low-rank update x @ A^T @ B^T * scaling added to a linear's output,
beside its weight, never merged into it, so a quantized weight stays quantized and switching an adapter
off gives back the base model's exact arithmetic (its hooks come off; nothing else changed).

An adapter is a list of LoraDelta, each landing on a slice of one of our linears' outputs: HF's q_proj
lands on the first H*d outputs of our fused `wqkv` (engine/quant/concat.py), a fused checkpoint's
qkv_proj on the three of `wq`, `wk`, `wv` when they are kept apart. engine/loaders/lora_adapter.py
builds them from a PEFT folder. The model code never knows: one forward hook per touched linear adds
the enabled adapters' deltas, and the runner skips CUDA graph replay while any is on (adapters_active).
Shape legend: N tokens (any leading dims), I a linear's input features, O its output features, r rank.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

_STACK = "adapter_stack"  # attribute on the model: its AdapterStack, made on first use


@dataclass(frozen=True, eq=False)
class LoraDelta:
    """One adapter matrix pair's update on rows [lo, lo + B.shape[0]) of `module`'s output."""

    module: str  # our linear's path in the model: "layers.0.attn.wqkv"
    lo: int  # its first output feature this delta adds to
    A: torch.Tensor  # [r, I]
    B: torch.Tensor  # [n, r]: the rows of the adapter's B that land on this module
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA


@dataclass(eq=False)
class LoraAdapter:
    name: str
    path: str
    rank: int
    alpha: float
    rslora: bool
    targets: tuple[str, ...]  # HF module names: "q_proj", ...
    layers: tuple[int, ...]
    deltas: list[LoraDelta] = field(default_factory=list)
    enabled: bool = True
    scale: float = 1.0  # the user's multiplier on the adapter's own scaling

    @property
    def parameters(self) -> int:
        """A and B values held (an A shared by the parts of a split fused projection counts once)."""
        seen_a = {id(d.A): d.A.numel() for d in self.deltas}
        return sum(seen_a.values()) + sum(d.B.numel() for d in self.deltas)


class AdapterStack:
    """The adapters loaded onto one model, in the order added, and the hooks that apply the enabled ones.
    Every change reinstalls the hooks from scratch: changes are rare, and there is one way to be right."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.adapters: dict[str, LoraAdapter] = {}
        self._hooks: list = []

    @property
    def active(self) -> bool:
        """Whether any enabled adapter changes the model's outputs now."""
        return bool(self._hooks)

    def add(self, adapter: LoraAdapter) -> None:
        if adapter.name in self.adapters:
            raise ValueError(f"an adapter named {adapter.name!r} is already loaded")
        for delta in adapter.deltas:
            self.model.get_submodule(delta.module)  # AttributeError now, not at the next forward
        self.adapters[adapter.name] = adapter
        self._install()

    def remove(self, name: str) -> LoraAdapter:
        adapter = self._get(name)
        del self.adapters[name]
        self._install()
        return adapter

    def configure(self, name: str, enabled: bool | None = None, scale: float | None = None) -> LoraAdapter:
        adapter = self._get(name)
        if scale is not None:
            adapter.scale = checked_scale(scale)
        if enabled is not None:
            adapter.enabled = bool(enabled)
        self._install()
        return adapter

    @contextmanager
    def suspended(self):
        """The model without any adapter for the duration (they come back after, even on error)."""
        self._uninstall()
        try:
            yield self.model
        finally:
            self._install()

    # -- hooks -----------------------------------------------------------------------------------
    def _get(self, name: str) -> LoraAdapter:
        if name not in self.adapters:
            loaded = ", ".join(self.adapters) or "none"
            raise ValueError(f"no adapter named {name!r} is loaded (loaded: {loaded})")
        return self.adapters[name]

    def _install(self) -> None:
        self._uninstall()
        by_module: dict[str, list[tuple[LoraDelta, float]]] = {}
        for adapter in self.adapters.values():
            if adapter.enabled:
                for delta in adapter.deltas:
                    by_module.setdefault(delta.module, []).append((delta, delta.scaling * adapter.scale))
        for path, deltas in by_module.items():
            module = self.model.get_submodule(path)
            self._hooks.append(module.register_forward_hook(_adding(tuple(deltas))))

    def _uninstall(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _adding(deltas: tuple[tuple[LoraDelta, float], ...]):
    def add_deltas(module, args, out: torch.Tensor) -> torch.Tensor:
        x = args[0]  # [N, I]
        for delta, factor in deltas:
            low = (x @ delta.A.T) @ delta.B.T  # [N, r] -> [N, n]
            # In place on the linear's fresh output: a fused projection's slice, or all of it.
            out.narrow(-1, delta.lo, delta.B.shape[0]).add_(low, alpha=factor)
        return out

    return add_deltas


def checked_scale(scale) -> float:
    """A scale as a float; ValueError for anything but a finite number."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not abs(scale) < 1e6:
        raise ValueError(f"an adapter's scale must be a finite number, got {scale!r}")
    return float(scale)


def adapter_stack(model: nn.Module) -> AdapterStack:
    """The model's AdapterStack (made empty on first use)."""
    stack = model.__dict__.get(_STACK)
    if stack is None:
        stack = AdapterStack(model)
        model.__dict__[_STACK] = stack  # a plain attribute: not a submodule, not in the state dict
    return stack


def adapters_active(model: nn.Module) -> bool:
    """Whether any enabled adapter is hooked into `model` (its forward is then not the captured graph's)."""
    stack = model.__dict__.get(_STACK)
    return stack is not None and stack.active
