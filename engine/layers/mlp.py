"""The dense gated feed-forward block: down(act(gate(x)) * up(x)); act is SiLU (SwiGLU) or, for Gemma,
tanh-approximated GELU (GeGLU)."""
import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, activation: str = "silu"):
        super().__init__()
        self.act = F.silu if activation == "silu" else _gelu_tanh
        self.w_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.w_up = nn.Linear(dim, hidden_dim, bias=False)
        self.w_down = nn.Linear(hidden_dim, dim, bias=False)
        self.w_gate_up = None  # gate and up stacked by engine.quant.concat.fuse_projections; w_gate/w_up are then None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate_up is not None:
            gate, up = self.w_gate_up(x).chunk(2, dim=-1)
            return self.w_down(self.act(gate) * up)
        return self.w_down(self.act(self.w_gate(x)) * self.w_up(x))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
