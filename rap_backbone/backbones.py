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

from eupe.export import EncoderInfo, ExportError, OnnxEncoder
from eupe.models import create_model, get_spec, load_student

log = logging.getLogger(__name__)

# Names users select with `backbone=<name>`; "student" needs a weights file that describes itself.
BACKBONE_NAMES = ("dinov3-s", "dinov3-b", "dinov3-l", "dinov3-h", "eupe-t", "eupe-s", "eupe-b",
                  "eupe-convnext-t", "eupe-convnext-s", "eupe-convnext-b", "edge-vit-96", "edge-vit-128",
                  "edge-tinyvit-5m", "student")


RUNTIMES = ("torch", "onnxruntime")


class EncoderContract(nn.Module):
    """What every backbone shares: its name, width, stride and input normalisation.

    Attributes:
        name: the short name it was built from.
        embed_dim: channels C of ``summary`` and ``patch``.
        stride: pixels per output cell (patch size of a ViT, output stride of a ConvNeXt / TinyViT).
        mean, std: the normalisation the encoder expects, on the 0..1 scale.
        weights_source: ``"random"``, a file path or a hub id; every result file records it.
    """

    def __init__(self, *, name: str, embed_dim: int, stride: int, weights_source: str, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        self.name, self.embed_dim, self.stride, self.weights_source = name, int(embed_dim), int(stride), weights_source
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] RGB -> the encoder's own normalisation."""
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def check_size(self, height: int, width: int) -> None:
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"backbone {self.name!r} needs image sizes that are multiples of {self.stride}, got "
                f"{height}x{width}; pad to {-(-height // self.stride) * self.stride}x"
                f"{-(-width // self.stride) * self.stride} (the RAP feature builder pads to a multiple of 32)")

    def check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone {self.name!r} expects images [B,3,H,W], got {tuple(images.shape)}")
        self.check_size(*images.shape[-2:])


class Backbone(EncoderContract):
    """A timm ViT (DINOv3-style ``Eva`` / ``VisionTransformer``) or a hierarchical encoder (ConvNeXt, TinyViT)
    behind the backbone contract (see :class:`EncoderContract` for the attributes).

    Attributes:
        family: ``"vit"`` or ``"hierarchical"`` (ConvNeXt, TinyViT).
        num_prefix_tokens: CLS + register tokens before the patches (0 for hierarchical encoders).
    """

    def __init__(self, model: nn.Module, *, name: str, weights_source: str, freeze: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        # ViTs keep a flat list of blocks; ConvNeXt and TinyViT have stages ending in a normed pooling head
        family = "hierarchical" if hasattr(model, "stages") and not hasattr(model, "blocks") else "vit"
        if family == "vit":
            patch = model.patch_embed.patch_size
            embed_dim, stride = model.embed_dim, patch[0] if isinstance(patch, (tuple, list)) else patch
        else:
            embed_dim, stride = model.num_features, model.feature_info[-1]["reduction"]
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(name=name, embed_dim=embed_dim, stride=stride, weights_source=weights_source,
                         mean=mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN),
                         std=std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD))
        self.model = model
        self.family = family
        self.num_prefix_tokens = int(model.num_prefix_tokens) if family == "vit" else 0
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
    def forward(self, images: torch.Tensor, *, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images [B,3,H,W]`` into ``(summary [B,C], patch [B,C,H/stride,W/stride])``."""
        self.check_images(images)
        height, width = images.shape[-2:]
        x = images if normalized else self.normalize(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.family == "vit":
                return self._forward_vit(x, height // self.stride, width // self.stride)
            return self._forward_hierarchical(x)

    def _forward_vit(self, x: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(x)  # [B, prefix + rows*cols, C], final norm applied
        summary = tokens[:, 0]
        patch = tokens[:, self.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, rows, cols)
        return summary, patch

    def _forward_hierarchical(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)  # [B, C, h, w], last stage
        # LayerNorm2d over channels: EUPE norms pooled and patch tokens alike (TinyViT's head norms the same way)
        norm = self.model.head.norm
        summary = norm(feats.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return summary, norm(feats)

    def forward_layers(self, images: torch.Tensor, indices: Sequence[int], *,
                       normalized: bool = False) -> list[torch.Tensor]:
        """Patch maps ``[B,C,h,w]`` of several blocks (ViT, final norm applied) or stages (ConvNeXt, TinyViT)."""
        self.check_size(*images.shape[-2:])
        x = images if normalized else self.normalize(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.family == "vit":
                return self.model.forward_intermediates(x, indices=list(indices), norm=True,
                                                        output_fmt="NCHW", intermediates_only=True)
            return self.model.forward_intermediates(x, indices=list(indices), intermediates_only=True)


class _NormalizedInput(nn.Module):
    """The backbone on already-normalised images: what an exported file computes."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(images, normalized=True)


class OnnxBackbone(EncoderContract):
    """An encoder exported by ``eupe.export`` (ONNX, fp32 or int8) run by onnxruntime, behind the same contract.

    It has no parameters (so a planner treats it as frozen); outputs come back as float32 torch tensors on the
    input's device.
    """

    family = "exported"

    def __init__(self, path: str | Path, *, name: str, threads: int | None = None) -> None:
        encoder = OnnxEncoder(path, threads=threads)
        info = encoder.info
        if info.name != name and not (name == "student" and info.name.startswith("student:")):
            raise ExportError(f"{path} holds encoder {info.name!r} ({info.precision}), not {name!r}: pass the file "
                              f"exported for {name!r} or select backbone={info.name.split(':')[0]}")
        super().__init__(name=info.name, embed_dim=info.embed_dim, stride=info.stride, mean=info.mean, std=info.std,
                         weights_source=f"{path} ({info.precision} onnxruntime, from {info.weights_source})")
        self.encoder, self.precision = encoder, info.precision

    def forward(self, images: torch.Tensor, *, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        x = images if normalized else self.normalize(images)
        summary, patch = self.encoder(x)
        return summary.to(images.device), patch.to(images.device)


def export_view(backbone: Backbone, sample_hw: tuple[int, int]) -> tuple[nn.Module, EncoderInfo]:
    """``(module on normalised images, its description)`` for ``eupe.export``; ``sample_hw`` is the trace size
    (TinyViT exports at that size only, see ``eupe.export``)."""
    from timm.models.tiny_vit import TinyVit

    fixed = tuple(sample_hw) if isinstance(backbone.model, TinyVit) else None
    info = EncoderInfo(name=backbone.name, stride=backbone.stride, embed_dim=backbone.embed_dim,
                       mean=tuple(backbone.mean), std=tuple(backbone.std), weights_source=backbone.weights_source,
                       fixed_hw=fixed)
    return _NormalizedInput(backbone).eval(), info


def backbone_names() -> list[str]:
    return list(BACKBONE_NAMES)


def build_backbone(name: str, weights: str | Path | None = None, freeze: bool = True, runtime: str = "torch",
                   **kwargs: Any) -> EncoderContract:
    """Build the backbone ``name`` (see :data:`BACKBONE_NAMES`).

    Args:
        name: short name, e.g. ``eupe-b``, ``dinov3-h`` or ``student``.
        weights: ``None`` (random, with one loud warning), ``"hub"``, or a local file / transformers snapshot;
            with ``runtime="onnxruntime"`` the ``.onnx`` file (fp32 or int8) exported for ``name``.
        freeze: freeze the encoder (RAP keeps DINOv3-H+ frozen); frozen encoders run under ``no_grad``.
        runtime: ``torch`` (a :class:`Backbone`) or ``onnxruntime`` (an :class:`OnnxBackbone`, always frozen).
        **kwargs: timm constructor overrides (``depth``, ``img_size``, ...), e.g. for reduced test models.
    """
    if name not in BACKBONE_NAMES:
        raise KeyError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONE_NAMES)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown backbone.runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        if weights is None or Path(weights).suffix != ".onnx":
            raise ValueError(f"backbone.runtime=onnxruntime needs the exported encoder: set backbone.weights=/path/"
                             f"to/{name}.onnx (write it with navsim_agents/run_export.py), got {weights!r}")
        if not freeze:
            raise ValueError("an onnxruntime backbone cannot train: set backbone.freeze=true or runtime=torch")
        return OnnxBackbone(weights, name=name, threads=torch.get_num_threads())
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


def build_backbone_from_config(cfg: Any) -> EncoderContract:
    """Build from a ``configs/backbone/<name>.yaml`` node (``name``, ``weights``, ``freeze``, ``runtime``,
    ``overrides``)."""
    overrides = dict(cfg.overrides) if getattr(cfg, "overrides", None) else {}
    return build_backbone(cfg.name, weights=cfg.weights, freeze=cfg.freeze, runtime=cfg.runtime, **overrides)
