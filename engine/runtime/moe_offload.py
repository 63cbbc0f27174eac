"""Experts that do not fit on the GPU: keep every MoE layer's stacked expert weights in (pinned)
CPU memory and put the rest of the model on the GPU. SparseMoE.expert_mlp copies an expert's three
matrices to the GPU only when a token was routed to it, so a decode step moves k experts per layer
(not E) over PCIe, and GPU memory holds attention, norms, embeddings, routers and one expert at a
time. Chosen over running experts on the CPU because it keeps every matmul on the GPU (prefill
stays fast: each used expert is copied once per step however many tokens it serves) and needs no
second code path for the expert math. Cost: an expert's bytes / PCIe bandwidth per use.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.rope import RopeTable

EXPERT_PARAMS = ("w_gate", "w_up", "w_down")


def expert_parameters(model) -> list[tuple[nn.Module, str]]:
    return [(block.mlp, name) for block in model.layers if block.is_moe for name in EXPERT_PARAMS]


def offload_experts(model, device, expert_device="cpu") -> int:
    """Move `model` (built on the CPU) to `device`, except its experts, which go to `expert_device`
    (pinned when they stay on the CPU and CUDA is there to read them). Returns the experts' bytes."""
    experts = {id(getattr(m, n)) for m, n in expert_parameters(model)}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in experts:
                setattr(module, name, nn.Parameter(p.detach().to(device), requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            module._buffers[name] = b.to(device)
    pin = torch.device(expert_device).type == "cpu" and torch.cuda.is_available()
    moved = 0
    for module, name in expert_parameters(model):
        t = getattr(module, name).detach().to(expert_device)
        setattr(module, name, nn.Parameter(t.pin_memory() if pin else t, requires_grad=False))
        module.offloaded = True
        moved += t.numel() * t.element_size()
    model.rope = RopeTable(model.config, device=device)
    return moved
