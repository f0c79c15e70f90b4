"""Adaptor heads that map student features into each teacher's feature space (EUPE recipe, spec section 2)."""

from __future__ import annotations

import torch
from torch import nn


class AdaptorMLP(nn.Module):
    """Linear (no bias) -> LayerNorm -> GELU -> Linear (no bias), applied on the last dimension."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.norm = nn.LayerNorm(hidden_dim, eps=ln_eps)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class TeacherHeads(nn.Module):
    """One summary head and one patch head for a single teacher."""

    def __init__(self, *, student_dim: int, teacher_summary_dim: int, teacher_patch_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.summary = AdaptorMLP(in_dim=student_dim, hidden_dim=hidden_dim, out_dim=teacher_summary_dim)
        self.patch = AdaptorMLP(in_dim=student_dim, hidden_dim=hidden_dim, out_dim=teacher_patch_dim)

    def forward(self, summary: torch.Tensor, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """summary [B,Cs] -> [B,Ct_sum]; patch tokens [B,N,Cs] -> [B,N,Ct_patch]."""
        return self.summary(summary), self.patch(patch)


def build_heads(
    *, student_dim: int, teacher_dims: dict[str, tuple[int, int]], hidden_dim: int
) -> nn.ModuleDict:
    """``teacher_dims``: name -> (summary_dim, patch_dim). Returns a ModuleDict name -> TeacherHeads.

    ModuleDict keys cannot contain dots, so teacher names are stored with '.' replaced by '_'.
    """
    return nn.ModuleDict({
        head_key(name): TeacherHeads(student_dim=student_dim, teacher_summary_dim=s, teacher_patch_dim=p,
                                     hidden_dim=hidden_dim)
        for name, (s, p) in teacher_dims.items()
    })


def head_key(teacher_name: str) -> str:
    """Module key for a teacher name (ModuleDict forbids '.')."""
    return teacher_name.replace(".", "_")
