"""The RAP 3D encoder as a distillation teacher (``rap-3d``): registered with ``eupe.teachers`` on import.

    >>> import rap_backbone.teacher  # noqa: F401  (registers "rap-3d")
    >>> t = eupe.teachers.build_teacher("rap-3d", weights="rap.ckpt")

``run_distill.py`` imports this module through its ``plugins`` list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from eupe.teachers import Teacher, TeacherOutput, TeacherSpec, register_teacher
from rap_backbone import checkpoints as ck
from rap_backbone.backbones import build_backbone

RAP_TEACHER = "rap-3d"


def build_rap_teacher(name: str, weights: str | Path | None, img_size: int, kwargs: dict[str, Any],
                       precision: str = "auto") -> Teacher:
    """RAP's image backbone followed by its Raster-to-Real projection (the planner's image neck).

    ``weights``: RAP's released checkpoint (``agent._rap_model.*``, loaded by ``load_rap_checkpoint``; pass
    ``backbone_config=`` the transformers config of the DINOv3 inside when it is not RAP's ViT-H+/16) or one
    written by our RAP agent (``load_planner_checkpoint``; ``kwargs["backbone"]`` names the backbone it was
    trained with, default ``dinov3-h``, and ``kwargs["backbone_kwargs"]`` its timm overrides). The features
    are the neck output per patch, the space RAP aligns real and rasterized camera features in (the camera /
    level embeddings RAP adds are constant offsets, removed by the feature normaliser anyway); the summary
    is their mean. Real or rasterized camera images are both valid input.
    """
    if weights is None:
        raise ValueError(f"teacher {name}: needs weights=PATH to a RAP or eupe-drive planner checkpoint")
    kwargs = dict(kwargs)
    backbone_name = kwargs.pop("backbone", "dinov3-h")
    backbone_kwargs = dict(kwargs.pop("backbone_kwargs", {}) or {})
    state = ck.read_checkpoint_state(weights)
    try:
        if any(k.startswith(ck.RAP_PREFIX) for k in state):
            planner = ck.load_rap_checkpoint(weights, **kwargs)
        else:
            backbone = build_backbone(backbone_name, **backbone_kwargs)
            planner = ck.load_planner_checkpoint(weights, backbone, **kwargs)
    except ck.CheckpointKeyError as err:
        raise ValueError(f"teacher {name}: checkpoint {weights} does not fit: {err}") from err
    del state
    backbone = planner.backbone
    encoder = _RapEncoder(backbone, planner.neck)
    return Teacher(name=name, model=encoder, img_size=img_size, mean=tuple(backbone.mean), std=tuple(backbone.std),
                   weights_source=str(weights), encode=_encode_rap, precision=precision)


class _RapEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck


def _encode_rap(model: _RapEncoder, x: torch.Tensor) -> TeacherOutput:
    _, patch_map = model.backbone(x, normalized=True)
    projected = model.neck(patch_map.to(next(model.neck.parameters()).dtype))
    tokens = projected.flatten(2).transpose(1, 2)
    return TeacherOutput(summary=tokens.mean(1), patch=tokens,
                         grid=(int(projected.shape[-2]), int(projected.shape[-1])))


register_teacher(RAP_TEACHER, TeacherSpec("rap", 256, factory="rap", description="RAP 3D encoder: RAP backbone + "
                                          "Raster-to-Real projector (weights=PATH)"), build_rap_teacher)
