"""Distillation losses (EUPE recipe, spec section 2).

summary: 1 - cosine(student_head(summary), teacher summary)
patch:   0.9 * (1 - cosine per token) + 0.1 * smooth-L1, after bicubic resizing of the smaller patch grid
         (student or teacher, by token count) to the larger one.
Every loss is a mean over batch (and tokens); teachers are summed with per-teacher weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# EUPE patch-loss mix (spec section 2): 0.9 cosine + 0.1 smooth-L1.
PATCH_COS_WEIGHT = 0.9
PATCH_SMOOTH_L1_WEIGHT = 0.1
# torch's default smooth-L1 transition point.
SMOOTH_L1_BETA = 1.0


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Mean of ``1 - cos(pred, target)`` along ``dim``; computed in fp32."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=dim, eps=1e-8)
    return (1.0 - cos).mean()


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, *, beta: float = SMOOTH_L1_BETA) -> torch.Tensor:
    """Elementwise smooth-L1 (0.5 d^2 / beta where |d| < beta, else |d| - beta/2), averaged."""
    return F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="mean")


def resize_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a feature map [B,C,h,w] to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=tuple(size), mode="bicubic", align_corners=False)


def match_grids(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the smaller of two maps [B,C,h,w] (by h*w) to the larger one's grid; ties keep the teacher's."""
    hs, ws = student.shape[-2:]
    ht, wt = teacher.shape[-2:]
    target = (hs, ws) if hs * ws > ht * wt else (ht, wt)
    return resize_grid(student, target), resize_grid(teacher, target)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens [B,N,C] -> map [B,C,h,w] with N = h*w (row-major)."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} patch tokens do not form a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def patch_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    cos_weight: float = PATCH_COS_WEIGHT,
    smooth_l1_weight: float = PATCH_SMOOTH_L1_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patch loss between maps [B,C,hs,ws] and [B,C,ht,wt]. Returns (mixed, cosine term, smooth-L1 term)."""
    s, t = match_grids(student, teacher)
    cos = cosine_loss(s, t, dim=1)
    l1 = smooth_l1_loss(s, t)
    return cos_weight * cos + smooth_l1_weight * l1, cos, l1


@dataclass(frozen=True)
class TeacherLossWeights:
    """Per-teacher weights of the summary and patch terms (EUPE: 1, with an optional patch gamma)."""

    summary: float = 1.0
    patch: float = 1.0


def distill_loss(
    student_summary: dict[str, torch.Tensor],
    student_patch: dict[str, torch.Tensor],
    teacher_summary: dict[str, torch.Tensor],
    teacher_patch: dict[str, torch.Tensor],
    weights: dict[str, TeacherLossWeights],
    *,
    cos_weight: float = PATCH_COS_WEIGHT,
    smooth_l1_weight: float = PATCH_SMOOTH_L1_WEIGHT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of weighted per-teacher summary and patch losses.

    Inputs are dicts keyed by teacher name: summaries [B,C], patch maps [B,C,h,w] (already normalised teacher
    features; student features already passed through that teacher's heads). Returns (total, terms) where
    terms holds ``<teacher>/summary_cos``, ``<teacher>/patch_cos``, ``<teacher>/patch_smooth_l1``,
    ``<teacher>/patch`` and ``<teacher>/total`` (unweighted per-term values; total is weighted).
    """
    total = torch.zeros((), device=next(iter(teacher_summary.values())).device)
    terms: dict[str, torch.Tensor] = {}
    for name in teacher_summary:
        w = weights.get(name, TeacherLossWeights())
        s_loss = cosine_loss(student_summary[name], teacher_summary[name])
        p_loss, p_cos, p_l1 = patch_loss(student_patch[name], teacher_patch[name], cos_weight=cos_weight,
                                         smooth_l1_weight=smooth_l1_weight)
        t_total = w.summary * s_loss + w.patch * p_loss
        terms.update({f"{name}/summary_cos": s_loss, f"{name}/patch_cos": p_cos,
                      f"{name}/patch_smooth_l1": p_l1, f"{name}/patch": p_loss, f"{name}/total": t_total})
        total = total + t_total
    return total, terms
