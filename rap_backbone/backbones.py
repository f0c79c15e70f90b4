"""The swappable image backbone of the RAP planner.

Every encoder, whatever its family, is wrapped in :class:`Backbone` with one contract::

    summary, patch = backbone(images)   # images [B,3,H,W] RGB in [0,1]; H, W multiples of backbone.stride
    summary: [B, C]                     # EUPE's CLS token (ViT) or the pooled, normed last stage (ConvNeXt)
    patch:   [B, C, H/stride, W/stride] # last-layer patch tokens after the final norm, prefix tokens dropped

``build_backbone("eupe-b")``, ``build_backbone("dinov3-h")`` (RAP's default), ``build_backbone("student",
weights=PATH)`` (a checkpoint written by our distillation) all return one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from eupe.models import create_model, get_spec, load_student

log = logging.getLogger(__name__)

# Names users select with `backbone=<name>`; "student" needs a weights file that describes itself.
BACKBONE_NAMES = ("dinov3-s", "dinov3-b", "dinov3-l", "dinov3-h", "eupe-t", "eupe-s", "eupe-b",
                  "eupe-convnext-t", "eupe-convnext-s", "eupe-convnext-b", "student")


class Backbone(nn.Module):
    """A timm ViT (DINOv3-style ``Eva`` / ``VisionTransformer``) or ConvNeXt behind the backbone contract.

    Attributes:
        name: the short name it was built from.
        embed_dim: channels C of ``summary`` and ``patch``.
        stride: pixels per output cell (patch size of a ViT, output stride of a ConvNeXt).
        mean, std: the normalisation the encoder expects, on the 0..1 scale.
        num_prefix_tokens: CLS + register tokens before the patches (0 for ConvNeXt).
        weights_source: ``"random"``, a file path or a hub id; every result file records it.
    """

    def __init__(self, model: nn.Module, *, name: str, weights_source: str, freeze: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.model = model
        self.name = name
        self.weights_source = weights_source
        self.family = "convnext" if hasattr(model, "stages") and not hasattr(model, "blocks") else "vit"
        if self.family == "vit":
            self.embed_dim = int(model.embed_dim)
            patch = model.patch_embed.patch_size
            self.stride = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
            self.num_prefix_tokens = int(model.num_prefix_tokens)
        else:
            self.embed_dim = int(model.num_features)
            self.stride = int(model.feature_info[-1]["reduction"])
            self.num_prefix_tokens = 0
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        self.std = tuple(std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD))
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        if freeze:
            self.freeze()

    @classmethod
    def from_timm(cls, model: nn.Module, *, name: str, weights_source: str | None = None, freeze: bool = True,
                  **kw: Any) -> "Backbone":
        """Wrap any timm ViT or ConvNeXt (e.g. one built from a transformers config or a RAP checkpoint)."""
        source = weights_source or getattr(model, "weights_source", "random")
        return cls(model, name=name, weights_source=source, freeze=freeze, **kw)

    # ---- training state -------------------------------------------------------------------------------
    def freeze(self) -> "Backbone":
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        return self

    @property
    def frozen(self) -> bool:
        """True when no parameter of the encoder trains (LoRA adapters count as trainable)."""
        return not any(p.requires_grad for p in self.model.parameters())

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen encoder stays in eval mode (no dropout / drop-path) whatever its parent does.
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    # ---- forward ----------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] RGB -> the encoder's own normalisation."""
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def check_size(self, height: int, width: int) -> None:
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"backbone {self.name!r} needs image sizes that are multiples of {self.stride}, got "
                f"{height}x{width}; pad to {-(-height // self.stride) * self.stride}x"
                f"{-(-width // self.stride) * self.stride} (the RAP feature builder pads to a multiple of 32)")

    def forward(self, images: torch.Tensor, *, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images [B,3,H,W]`` into ``(summary [B,C], patch [B,C,H/stride,W/stride])``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone {self.name!r} expects images [B,3,H,W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        self.check_size(height, width)
        x = images if normalized else self.normalize(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.family == "vit":
                return self._forward_vit(x, height // self.stride, width // self.stride)
            return self._forward_convnext(x)

    def _forward_vit(self, x: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(x)  # [B, prefix + rows*cols, C], final norm applied
        summary = tokens[:, 0]
        patch = tokens[:, self.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, rows, cols)
        return summary, patch

    def _forward_convnext(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)  # [B, C, h, w], last stage
        norm = self.model.head.norm  # LayerNorm2d over channels: EUPE norms pooled and patch tokens alike
        summary = norm(feats.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return summary, norm(feats)

    def forward_layers(self, images: torch.Tensor, indices: Sequence[int], *,
                       normalized: bool = False) -> list[torch.Tensor]:
        """Patch maps ``[B,C,h,w]`` of several blocks (ViT, final norm applied) or stages (ConvNeXt)."""
        self.check_size(*images.shape[-2:])
        x = images if normalized else self.normalize(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.family == "vit":
                return self.model.forward_intermediates(x, indices=list(indices), norm=True,
                                                        output_fmt="NCHW", intermediates_only=True)
            return self.model.forward_intermediates(x, indices=list(indices), intermediates_only=True)


def backbone_names() -> list[str]:
    return list(BACKBONE_NAMES)


def build_backbone(name: str, weights: str | Path | None = None, freeze: bool = True, **kwargs: Any) -> Backbone:
    """Build the backbone ``name`` (see :data:`BACKBONE_NAMES`).

    Args:
        name: short name, e.g. ``eupe-b``, ``dinov3-h`` or ``student``.
        weights: ``None`` (random, with one loud warning), ``"hub"``, or a local file / transformers snapshot.
        freeze: freeze the encoder (RAP keeps DINOv3-H+ frozen); frozen encoders run under ``no_grad``.
        **kwargs: timm constructor overrides (``depth``, ``img_size``, ...), e.g. for reduced test models.
    """
    if name not in BACKBONE_NAMES:
        raise KeyError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONE_NAMES)}")
    if name == "student":
        if weights is None:
            raise ValueError("backbone 'student' needs a checkpoint written by eupe/run_distill.py: "
                             "set backbone.weights=/path/to/student.safetensors")
        model, meta = load_student(weights)
        backbone = Backbone.from_timm(model, name=f"student:{meta.get('model_name', '?')}",
                                      weights_source=str(weights), freeze=freeze,
                                      mean=meta.get("mean"), std=meta.get("std"))
        return backbone
    get_spec(name)  # validates before building anything large
    model = create_model(name, weights=weights, **kwargs)
    if model.weights_source == "random":
        log.warning("backbone %s has RANDOM weights: results mean nothing for the encoder's quality. Set "
                    "backbone.weights=/path/to/checkpoint (or backbone.weights=hub with a populated HF cache).",
                    name)
    return Backbone.from_timm(model, name=name, freeze=freeze)


def build_backbone_from_config(cfg: Any) -> Backbone:
    """Build from a ``configs/backbone/<name>.yaml`` node (``name``, ``weights``, ``freeze``, ``overrides``)."""
    overrides = dict(cfg.overrides) if getattr(cfg, "overrides", None) else {}
    return build_backbone(cfg.name, weights=cfg.weights, freeze=cfg.freeze, **overrides)
