"""EUPE and DINOv3 encoders as timm models, selected by short names.

timm already carries EUPE as pretrained tags of its own classes (``vit_*_patch16_dinov3_qkvb.eupe_lvd1689m``,
``convnext_*.eupe_lvd1689m``) and the DINOv3 family as ``Eva`` configurations; this module only maps our short
names onto them with the settings that reproduce EUPE's own ``forward`` (CLS-token pooling, no classifier,
dynamic image size) and loads weights from a local file, a transformers snapshot or the timm / HF hub cache.

    >>> model = create_model("eupe-b")                       # random weights (says so)
    >>> model = create_model("eupe-b", weights="EUPE-ViT-B.pt")  # official FAIR file
    >>> model = create_model("eupe-b", weights="hub")        # timm/HF hub cache
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from eupe.student_checkpoint import is_student_checkpoint, load_student_state_dict, load_student_tensors

log = logging.getLogger(__name__)

# EUPE's released checkpoints carry distillation-only heads (facebookresearch/EUPE, hub/backbones.py loads
# with strict=False); they are not part of the encoder.
TRAINING_ONLY_PREFIXES = ("projectors.",)


@dataclass(frozen=True)
class ModelSpec:
    """One short name: the timm architecture, its pretrained tag (if any) and extra constructor settings."""

    arch: str
    family: str  # "vit", "convnext" or "tinyvit" (hierarchical: a stride-32 last stage, like ConvNeXt)
    tag: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}" if self.tag else self.arch


# ViT-G proxy of EUPE stage 1 (~1.9B): PE-core-G's width/depth (1536 x 50, MLP 8960) on the DINOv3 ViT
# (4 registers, RoPE, layer scale), the student the EUPE paper scales up to before scaling down.
_PROXY_G = dict(embed_dim=1536, depth=50, num_heads=24, mlp_ratio=8960 / 1536, swiglu_mlp=False)

# Edge students below EUPE's smallest encoder (ViT-T, 5.5M): EUPE ViT-T's own architecture (timm
# vit_tiny_patch16_dinov3_qkvb: patch 16, 12 blocks, 4 registers, RoPE, layer scale) at a smaller width.
# Parameters = 144 C^2 + 944 C (12 blocks of 12 C^2 + 14 C, patch embedding 768 C + C, CLS + 4 registers 5 C,
# final norm 2 C): 1.42M at C = 96, 2.48M at C = 128 (C = 192 gives EUPE ViT-T's 5.49M).
EDGE_VIT_WIDTHS = {"edge-vit-96": (96, 2), "edge-vit-128": (128, 2)}  # name -> (embed_dim, heads of 48 / 64)

MODELS: dict[str, ModelSpec] = {
    "eupe-t": ModelSpec("vit_tiny_patch16_dinov3_qkvb", "vit", "eupe_lvd1689m", description="EUPE ViT-T/16"),
    "eupe-s": ModelSpec("vit_small_patch16_dinov3_qkvb", "vit", "eupe_lvd1689m", description="EUPE ViT-S/16"),
    "eupe-b": ModelSpec("vit_base_patch16_dinov3_qkvb", "vit", "eupe_lvd1689m", description="EUPE ViT-B/16"),
    "eupe-convnext-t": ModelSpec("convnext_tiny", "convnext", "eupe_lvd1689m", description="EUPE ConvNeXt-T"),
    "eupe-convnext-s": ModelSpec("convnext_small", "convnext", "eupe_lvd1689m", description="EUPE ConvNeXt-S"),
    "eupe-convnext-b": ModelSpec("convnext_base", "convnext", "eupe_lvd1689m", description="EUPE ConvNeXt-B"),
    "dinov3-s": ModelSpec("vit_small_patch16_dinov3", "vit", "lvd1689m", description="DINOv3 ViT-S/16"),
    "dinov3-b": ModelSpec("vit_base_patch16_dinov3", "vit", "lvd1689m", description="DINOv3 ViT-B/16"),
    "dinov3-l": ModelSpec("vit_large_patch16_dinov3", "vit", "lvd1689m", description="DINOv3 ViT-L/16"),
    "dinov3-h": ModelSpec("vit_huge_plus_patch16_dinov3", "vit", "lvd1689m",
                          description="DINOv3 ViT-H+/16 (RAP's backbone)"),
    "dinov3-7b": ModelSpec("vit_7b_patch16_dinov3", "vit", "lvd1689m", description="DINOv3 ViT-7B/16"),
    # Edge students (no published weights for the ViTs: distil them with distill=stage4_edge).
    **{name: ModelSpec("vit_tiny_patch16_dinov3_qkvb", "vit", kwargs=dict(embed_dim=dim, num_heads=heads),
                       description=f"edge ViT/16, width {dim} (EUPE ViT-T below its width)")
       for name, (dim, heads) in EDGE_VIT_WIDTHS.items()},
    # TinyViT-5M (microsoft/Cream TinyViT, timm tiny_vit_5m_224): windowed attention pads the windows, so it
    # runs at RAP's non-square inputs; its IN-22k-distilled weights serve as a starting point.
    "edge-tinyvit-5m": ModelSpec("tiny_vit_5m_224", "tinyvit", "dist_in22k_ft_in1k",
                                 description="TinyViT-5M (stride 32)"),
    # Proxy students of the recipe's stage 1; timm has no weights for them, so they have no tag.
    "proxy-l": ModelSpec("vit_large_patch16_dinov3_qkvb", "vit", description="EUPE proxy ViT-L/16 (~300M)"),
    "proxy-h": ModelSpec("vit_huge_plus_patch16_dinov3_qkvb", "vit", description="EUPE proxy ViT-H+/16 (~840M)"),
    "proxy-g": ModelSpec("vit_huge_plus_patch16_dinov3_qkvb", "vit", kwargs=_PROXY_G,
                         description="EUPE proxy ViT-G/16 (~1.9B)"),
}


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the architecture it was given to."""


def model_names() -> list[str]:
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model name {name!r}; known names: {', '.join(model_names())}") from None


def _timm_kwargs(spec: ModelSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = dict(num_classes=0)
    if spec.family == "vit":
        # EUPE's forward returns the normed CLS token; timm's Eva default is average pooling.
        kw.update(global_pool="token", dynamic_img_size=True)
    kw.update(spec.kwargs)
    kw.update(overrides)
    return kw


def create_model(name: str, weights: str | Path | None = None, *, device: str | torch.device | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build the timm model behind a short name and load its weights.

    Args:
        name: a short name from :data:`MODELS` (``eupe-b``, ``dinov3-h``, ...).
        weights: ``None`` (random init), ``"hub"`` (timm / Hugging Face hub cache), or a local path: an official
            FAIR checkpoint (flat DINOv3-layout state dict), timm's safetensors, a student checkpoint written by
            ``eupe/run_distill.py`` for this architecture, or a transformers snapshot directory
            (``config.json`` + ``model.safetensors``) of ``facebook/dinov3-*``.
        device: where to build; ``"meta"`` builds without allocating (for parameter counts of huge models).
        **kwargs: extra timm constructor arguments (e.g. ``img_size``, ``depth`` for a reduced test model).

    Returns:
        The timm model, with ``model.weights_source`` set to ``"random"``, the file path or the hub id.
    """
    spec = get_spec(name)
    kw = _timm_kwargs(spec, kwargs)
    if weights == "hub":
        if spec.tag is None:
            raise WeightsError(f"{name!r} has no published weights; train it or pass a local file")
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, **kw)
        except Exception as exc:  # network, missing cache, licence gate
            raise WeightsError(
                f"could not fetch {spec.timm_name!r} from the timm/HF hub cache ({exc}); download the file "
                f"elsewhere and pass backbone.weights=/path/to/file") from exc
        model.weights_source = f"hf-hub:timm/{spec.timm_name}"
        return model

    path = Path(weights) if weights is not None else None
    if path is not None and path.is_dir():
        from eupe.hf_dinov3 import create_timm_dinov3_from_hf, is_hf_snapshot

        if not is_hf_snapshot(path):
            raise WeightsError(f"{path} is a directory but not a transformers snapshot (config.json + "
                               f"model.safetensors); pass a weights file instead")
        model = create_timm_dinov3_from_hf(path)
        model.weights_source = str(path)
        return model

    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = timm.create_model(spec.timm_name, pretrained=False, **kw)
    model.weights_source = "random"
    if path is not None:
        load_weights(model, path, family=spec.family)
        model.weights_source = str(path)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat tensor dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects.

    Lightning / timm wrappers (``state_dict``, ``model``, ``model_ema``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}. It must be a "
                           f"safetensors file or a torch state dict of tensors") from exc
    for key in ("model_ema", "model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat dict of tensors (found {type(state).__name__})")
    return state


def _timm_filter(family: str):
    """timm's own checkpoint filter for a family (FAIR DINOv3/EUPE layout -> timm layout)."""
    if family == "vit":
        from timm.models.eva import checkpoint_filter_fn
    elif family == "tinyvit":
        # resizes the attention-bias tables when the file's windows differ from the model's
        from timm.models.tiny_vit import checkpoint_filter_fn
    else:
        from timm.models.convnext import checkpoint_filter_fn
    return checkpoint_filter_fn


def load_weights(model: nn.Module, path: str | Path, *, family: str) -> None:
    """Load a FAIR or timm checkpoint into ``model`` through timm's filter, strictly.

    Training-only keys (``projectors.*``) are skipped and listed once; a missing, unexpected or mis-shaped key
    raises :class:`WeightsError` naming the keys and the file.
    """
    # A student written by our distillation keeps timm's own layout under a "student." prefix.
    state = load_student_state_dict(path) if is_student_checkpoint(path) else read_state_dict(path)
    skipped = sorted(k for k in state if k.startswith(TRAINING_ONLY_PREFIXES))
    if skipped:
        log.info("%s: skipping %d training-only keys (%s ...)", path, len(skipped), skipped[0])
    state = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    try:
        state = _timm_filter(family)(state, model)
    except Exception as exc:
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not _is_nonpersistent(model, k))
    unexpected = sorted(k for k in state if k not in own)
    shape = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state.items() if k in own and v.shape != own[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_head(unexpected)}")
        if shape:
            parts.append(f"mis-shaped keys {_head(shape)}")
        raise WeightsError(f"{path} does not fit this architecture: " + "; ".join(parts)
                           + ". Check that the file is for this model name.")
    model.load_state_dict(state, strict=False)


def _is_nonpersistent(model: nn.Module, key: str) -> bool:
    # RoPE periods are computed, not loaded (timm's filter drops them from FAIR files too).
    return "rope" in key


def _head(items: list[str], n: int = 8) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + "]" + more


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- students written by eupe.distill (format: eupe.student_checkpoint) ----------------------------------
def student_factory(model_name: str) -> str:
    """Short EUPE / DINOv3 / edge names go through ``eupe.create_model``; anything else is a timm name."""
    if model_name.startswith(("eupe-", "dinov3-", "edge-")):
        return "eupe"
    return "timm"


def build_student_model(model_name: str, timm_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Build an untrained student ``model_name`` (timm name or eupe short name) with ``timm_kwargs``."""
    kwargs = dict(timm_kwargs or {})
    if student_factory(model_name) == "eupe":
        return create_model(model_name, weights=None, **kwargs)
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"student model {model_name!r} is not a timm model name nor an eupe short name "
                         f"(eupe-t/s/b, eupe-convnext-t/s/b, dinov3-*, edge-*); see timm.list_models()")
    return timm.create_model(model_name, pretrained=False, **kwargs)


def load_student(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the student recorded in ``path`` and load its weights strictly.

    Returns ``(model, meta)``: ``model`` is the timm model in eval mode; ``meta`` is the checkpoint's JSON
    metadata plus ``normalizer`` (name -> tensor), ``path`` and ``weights_source`` (the file path).
    """
    groups, meta = load_student_tensors(path)
    model = build_student_model(meta["model_name"], meta.get("timm_kwargs"))
    missing, unexpected = model.load_state_dict(groups["student"], strict=False)
    if missing or unexpected:
        raise ValueError(f"student checkpoint {path} does not fit {meta['model_name']} {meta.get('timm_kwargs')}: "
                         f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    model.to(map_location).eval()
    meta = dict(meta, normalizer=groups["normalizer"], path=str(path), weights_source=str(path))
    if groups["heads"]:
        meta["heads"] = groups["heads"]
    return model, meta
