"""RAP training losses on tensors.

Reference: vita-epfl/RAP ``navsim/agents/rap_dino/rap_agent.py`` (``rap_loss``, ``score_loss``) and
``navsim_config.py`` (weights): trajectory_weight 1, prev_weight 0.1, final_score_weight 1,
sub_score_weight 0, pred_ce_weight 1, pred_l1_weight 0.1, pred_area_weight 2; cross-agent samples
(``score_mask`` False) get weight 0.1 in the imitation term and no score supervision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CROSS_AGENT_IMITATION_WEIGHT = 0.1  # rap_agent.py: ``weight[~score_mask] = 0.1``


@dataclass(frozen=True)
class RAPLossWeights:
    """Loss weights (defaults: RAP's ``navsim_config.py``)."""

    trajectory: float = 1.0
    prev: float = 0.1
    final_score: float = 1.0
    sub_score: float = 0.0
    collision_ce: float = 1.0
    collision_l1: float = 0.1
    area: float = 2.0
    cross_agent: float = CROSS_AGENT_IMITATION_WEIGHT


def min_proposal_l1(proposals: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Winner-take-all distance ``[B]``: min over proposals of the mean over poses of the L1 norm of
    (dx, dy, dheading). ``proposals [B,N,T,3]``, ``target [B,T,3]``."""
    return (proposals - target[:, None]).abs().sum(-1).mean(-1).amin(1)


def imitation_weights(score_mask: torch.Tensor, weights: RAPLossWeights = RAPLossWeights()) -> torch.Tensor:
    """Per-sample imitation weight: 1, or ``weights.cross_agent`` where ``score_mask`` is False (RAP)."""
    return torch.where(score_mask.bool(), 1.0, weights.cross_agent)


def trajectory_loss(proposal_list: list[torch.Tensor], target: torch.Tensor, sample_weight: torch.Tensor,
                    weights: RAPLossWeights = RAPLossWeights()) -> tuple[torch.Tensor, torch.Tensor]:
    """Imitation loss accumulated over refinements: ``L <- prev * L + mean_b(w_b * minL1_b)``.

    ``sample_weight [B]``: per-sample weights (see :func:`imitation_weights`).
    Returns (accumulated loss, the last stage's weighted min-L1).
    """
    sample_w = sample_weight.to(target.dtype)
    total = target.new_zeros(())
    last = total
    for proposals in proposal_list:
        last = (min_proposal_l1(proposals, target) * sample_w).mean()
        total = weights.prev * total + last
    return total, last


def score_losses(pred_logit: torch.Tensor, target_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sub-score BCE over all 6 logits, final-score BCE on the last logit).

    ``pred_logit [B,N,6]``; ``target_scores [B,N,6]`` = PDM (NC, DAC, EP, TTC, C, score) of each proposal.
    """
    sub = F.binary_cross_entropy_with_logits(pred_logit, target_scores[..., -pred_logit.shape[-1]:])
    final = F.binary_cross_entropy_with_logits(pred_logit[..., -1], target_scores[..., -1])
    return sub, final


def collision_losses(pred_states: torch.Tensor, gt_corners: torch.Tensor, gt_valid: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE of the colliding-agent presence logits, L1 of its corners where present).

    ``pred_states [..., 9]`` with 8 corner coordinates then one logit, reshaped to ``gt_corners
    [B,N,K,A,4,2]`` / ``gt_valid [B,N,K,A]`` (K sub-steps, A=2 agents: at-fault collision, TTC).
    """
    states = pred_states[..., :-1].reshape(gt_corners.shape)
    logits = pred_states[..., -1:].reshape(gt_valid.shape)
    ce = F.binary_cross_entropy_with_logits(logits, gt_valid.to(logits.dtype))
    valid = gt_valid.bool()
    l1 = F.l1_loss(states[valid], gt_corners[valid]) if valid.any() else states.sum() * 0.0
    return ce, l1


def area_loss(pred_area_logit: torch.Tensor, gt_areas: torch.Tensor) -> torch.Tensor:
    """BCE of ego-area flags. ``pred_area_logit`` reshapes to ``[B,N,K',D]`` and is cut to ``gt_areas
    [B,N,K,D]`` (K <= K')."""
    b, n, k, d = gt_areas.shape
    logits = pred_area_logit.reshape(b, n, -1, d)[:, :, :k]
    return F.binary_cross_entropy_with_logits(logits, gt_areas.to(logits.dtype))
