"""Teachers for distillation: any timm encoder -> (summary [B,C], patch tokens [B,N,C] + grid).

Each teacher runs at its own native resolution and input normalisation (from its timm ``pretrained_cfg``),
frozen, under ``no_grad`` and, on GPU, bf16 autocast. A teacher can be placed on its own device (``device``),
which shards a multi-teacher set over the GPUs of one process.

Registry names (``teacher_names()``): PE-core / PE-lang / PE-spatial, DINOv3 of any size, SigLIP / SigLIP2,
SAM, RADIO, EUPE encoders, the EUPE proxy (a stage-1 student checkpoint, see ``eupe.distill.export``), and
``timm:<any timm model name>``. Teachers defined by higher layers join the registry with :func:`register_teacher`
when their module is imported (the RAP 3D encoder ``rap-3d``: ``rap_backbone.teacher``); ``run_distill.py``
imports the modules its ``plugins`` list names.

    >>> t = build_teacher("dinov3-b", weights="hub")
    >>> out = t(images01)          # images in [0,1], any size: resized to the teacher's resolution
    >>> out.summary.shape, out.patch.shape, out.grid
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from eupe.models import create_model, load_student

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSpec:
    """A registry entry: the timm architecture (or another factory), native resolution, constructor args."""

    arch: str
    img_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub_tag: str | None = None  # timm pretrained tag used with weights="hub" (None: timm's default tag)
    factory: str = "timm"  # "timm" | "eupe" (eupe.create_model short name) | "student" | a registered builder
    description: str = ""


_TOKEN = dict(global_pool="token")
# Native resolutions: timm pretrained_cfg input sizes of each tag; EUPE recipe runs PE at 448 and DINOv3 at
# 256 (spec section 2).
TEACHERS: dict[str, TeacherSpec] = {
    "pe-core-g": TeacherSpec("vit_pe_core_gigantic_patch14_448", 448, description="PE-core G/14 (1.9B)"),
    "pe-core-l": TeacherSpec("vit_pe_core_large_patch14_336", 336, description="PE-core L/14"),
    "pe-core-b": TeacherSpec("vit_pe_core_base_patch16_224", 224, description="PE-core B/16"),
    "pe-core-s": TeacherSpec("vit_pe_core_small_patch16_384", 384, description="PE-core S/16"),
    "pe-core-t": TeacherSpec("vit_pe_core_tiny_patch16_384", 384, description="PE-core T/16"),
    "pe-lang-g": TeacherSpec("vit_pe_lang_gigantic_patch14_448", 448, description="PE-lang G/14 (1.7B)"),
    "pe-lang-l": TeacherSpec("vit_pe_lang_large_patch14_448", 448, description="PE-lang L/14"),
    "pe-spatial-g": TeacherSpec("vit_pe_spatial_gigantic_patch14_448", 448, description="PE-spatial G/14"),
    "pe-spatial-l": TeacherSpec("vit_pe_spatial_large_patch14_448", 448, description="PE-spatial L/14"),
    "pe-spatial-b": TeacherSpec("vit_pe_spatial_base_patch16_512", 512, description="PE-spatial B/16"),
    "pe-spatial-s": TeacherSpec("vit_pe_spatial_small_patch16_512", 512, description="PE-spatial S/16"),
    "pe-spatial-t": TeacherSpec("vit_pe_spatial_tiny_patch16_512", 512, description="PE-spatial T/16"),
    "dinov3-s": TeacherSpec("vit_small_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 S/16"),
    "dinov3-s+": TeacherSpec("vit_small_plus_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 S+/16"),
    "dinov3-b": TeacherSpec("vit_base_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 B/16"),
    "dinov3-l": TeacherSpec("vit_large_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 L/16"),
    "dinov3-h": TeacherSpec("vit_huge_plus_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 H+/16 (840M)"),
    "dinov3-7b": TeacherSpec("vit_7b_patch16_dinov3", 256, _TOKEN, "lvd1689m", description="DINOv3 7B/16"),
    "siglip-b": TeacherSpec("vit_base_patch16_siglip_256", 256, hub_tag="webli", description="SigLIP B/16"),
    "siglip2-b": TeacherSpec("vit_base_patch16_siglip_256", 256, hub_tag="v2_webli", description="SigLIP2 B/16"),
    "siglip2-so400m": TeacherSpec("vit_so400m_patch16_siglip_256", 256, hub_tag="v2_webli",
                                  description="SigLIP2 So400m/16"),
    "sam-b": TeacherSpec("samvit_base_patch16", 1024, description="SAM ViT-B image encoder (neck output)"),
    "sam-l": TeacherSpec("samvit_large_patch16", 1024, description="SAM ViT-L image encoder (neck output)"),
    "sam-h": TeacherSpec("samvit_huge_patch16", 1024, description="SAM ViT-H image encoder (neck output)"),
    "radio-b": TeacherSpec("vit_base_patch16_radio_v3", 512, _TOKEN, description="C-RADIOv3 B/16"),
    "radio-l": TeacherSpec("vit_large_patch16_radio_v3", 512, _TOKEN, description="C-RADIOv3 L/16"),
    "radio-h": TeacherSpec("vit_huge_patch16_radio_v3", 512, _TOKEN, description="C-RADIOv3 H/16"),
    "eupe-t": TeacherSpec("eupe-t", 256, factory="eupe", description="EUPE ViT-T/16"),
    "eupe-s": TeacherSpec("eupe-s", 256, factory="eupe", description="EUPE ViT-S/16"),
    "eupe-b": TeacherSpec("eupe-b", 256, factory="eupe", description="EUPE ViT-B/16"),
    "eupe-proxy": TeacherSpec("student", 256, factory="student",
                              description="EUPE proxy: a stage-1 student checkpoint (weights=PATH)"),
}
TIMM_PREFIX = "timm:"
# Builders of registered teachers: (name, weights, img_size, timm/constructor kwargs, precision) -> Teacher
TeacherBuilder = Callable[[str, "str | Path | None", int, dict[str, Any], str], "Teacher"]
_BUILDERS: dict[str, TeacherBuilder] = {}


def register_teacher(name: str, spec: TeacherSpec, builder: TeacherBuilder) -> None:
    """Add a teacher defined outside ``eupe`` (a higher layer) under ``name``; ``builder`` builds it.

    Registering the same name again replaces it (a module imported twice under test runners).
    """
    TEACHERS[name] = spec
    _BUILDERS[name] = builder

# auto: bf16 autocast on CUDA (the "teachers run in bf16 on GPU") or inside a caller's bf16 autocast.
TEACHER_PRECISIONS = ("auto", "bf16", "fp32")


def teacher_names() -> list[str]:
    """Registry names, plus the ``timm:<name>`` form for any timm model."""
    return sorted(TEACHERS) + [f"{TIMM_PREFIX}<any timm model>"]


def get_teacher_spec(name: str) -> TeacherSpec:
    """Registry entry for ``name`` (or an ad-hoc entry for ``timm:<model>``); unknown names raise KeyError."""
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not timm.is_model(arch.split(".")[0]):
            raise KeyError(f"teacher {name!r}: timm does not know model {arch!r} (see timm.list_models())")
        return TeacherSpec(arch.split(".")[0], 0, hub_tag=arch.partition(".")[2] or None,
                           description=f"timm {arch}")
    try:
        return TEACHERS[name]
    except KeyError:
        raise KeyError(f"unknown teacher {name!r}; known teachers: {', '.join(teacher_names())} (a teacher of "
                       "another package registers when its module is imported: add that module to "
                       "run_distill's plugins)") from None


@dataclass
class TeacherOutput:
    """Teacher features: summary [B,Cs], patch tokens [B,N,Cp] (row-major over ``grid`` = (h, w))."""

    summary: torch.Tensor
    patch: torch.Tensor
    grid: tuple[int, int]


def encode_timm(model: nn.Module, x: torch.Tensor) -> TeacherOutput:
    """Run a timm encoder on normalised images ``x [B,3,H,W]`` -> summary, patch tokens and their grid.

    ViTs (VisionTransformer, Eva): patch tokens are the tokens after the model's prefix (CLS + registers);
    the summary is ``forward_head(pre_logits=True)`` (CLS token, attention pool or average, per the model).
    Feature maps [B,C,h,w] (ConvNeXt, SAM neck) are flattened row-major; the summary is the pooled head.
    """
    feats = model.forward_features(x)
    if isinstance(feats, (tuple, list)):
        feats = feats[0]
    summary = model.forward_head(feats, pre_logits=True)
    if feats.ndim == 4:
        grid = (int(feats.shape[-2]), int(feats.shape[-1]))
        patch = feats.flatten(2).transpose(1, 2)
    else:
        npt = int(getattr(model, "num_prefix_tokens", 0))
        patch = feats[:, npt:]
        ps = model.patch_embed.patch_size
        ph, pw = (ps, ps) if isinstance(ps, int) else ps
        grid = (x.shape[-2] // ph, x.shape[-1] // pw)
        if patch.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{type(model).__name__}: {patch.shape[1]} patch tokens do not form a {grid} grid")
    if summary.ndim != 2:
        summary = summary.flatten(1)
    return TeacherOutput(summary=summary, patch=patch, grid=grid)


class Teacher(nn.Module):
    """A frozen encoder at its native resolution and normalisation.

    ``forward(images)`` takes RGB in [0,1] of any size (on any device) and returns fp32 ``TeacherOutput``
    on the teacher's device. ``size`` overrides the resolution (stage-3 multi-resolution draws).
    """

    def __init__(self, *, name: str, model: nn.Module, img_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], weights_source: str, encode=encode_timm, precision: str = "auto") -> None:
        super().__init__()
        if precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher {name}: precision {precision!r} unknown; use one of {TEACHER_PRECISIONS}")
        self.name, self.model, self.img_size = name, model, int(img_size)
        self.weights_source, self.precision = weights_source, precision
        self._encode = encode
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, self.img_size, self.img_size))
        self.summary_dim = int(probe.summary.shape[-1])
        self.patch_dim = int(probe.patch.shape[-1])
        self.native_grid = probe.grid

    def train(self, mode: bool = True) -> Teacher:  # a teacher never leaves eval mode
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, size: int | tuple[int, int] | None = None) -> TeacherOutput:
        size = size or self.img_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = images.to(self.device, non_blocking=True).float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.runs_bf16(x.device)):
            out = self._encode(self.model, x)
        return TeacherOutput(summary=out.summary.float(), patch=out.patch.float(), grid=out.grid)

    def runs_bf16(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` runs under bf16 autocast: ``bf16`` always, ``fp32`` never, ``auto``
        on CUDA or when the caller already runs bf16 autocast there (e.g. a Lightning ``bf16-mixed`` step on CPU)."""
        if self.precision != "auto":
            return self.precision == "bf16"
        if device.type == "cuda":
            return True
        return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.bfloat16


def _load_timm(spec: TeacherSpec, name: str, weights: str | Path | None, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    kw = dict(num_classes=0)
    kw.update(spec.kwargs)
    is_vit_like = spec.arch.startswith(("vit_", "eva", "deit", "naflexvit"))
    if is_vit_like:
        kw.setdefault("dynamic_img_size", True)  # stage 3 runs teachers at several resolutions
    kw.update(kwargs)
    if weights is None:
        log.warning("teacher %s: RANDOM weights (no checkpoint given); its features carry no knowledge", name)
        return timm.create_model(spec.arch, pretrained=False, **kw), "random"
    if weights == "hub":
        tagged = f"{spec.arch}.{spec.hub_tag}" if spec.hub_tag else spec.arch
        try:
            return timm.create_model(tagged, pretrained=True, **kw), f"hf-hub:timm/{tagged}"
        except Exception as err:
            raise RuntimeError(f"teacher {name}: could not fetch {tagged!r} from the timm/HF hub cache ({err}); "
                               "download it elsewhere and pass weights=/path/to/file") from err
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"teacher {name}: checkpoint {path} does not exist")
    try:
        # timm's own loader (weights_only) and the architecture's checkpoint filter (FAIR / OpenCLIP layouts)
        model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=dict(
            file=str(path), hf_hub_id=None, url=None, num_classes=0), **kw)
    except Exception as err:
        raise ValueError(f"teacher {name}: checkpoint {path} does not fit {spec.arch}: "
                         f"{type(err).__name__}: {str(err)[:400]}") from err
    return model, str(path)


def build_teacher(name: str, *, weights: str | Path | None = None, img_size: int | None = None,
                  device: str | torch.device | None = None, precision: str = "auto", **kwargs: Any) -> Teacher:
    """Build a frozen teacher.

    Args:
        name: a registry name (``teacher_names()``) or ``timm:<model name>``.
        weights: None (random init, logged loudly), ``"hub"`` (timm / HF cache), or a checkpoint path.
        img_size: resolution the teacher runs at (default: its native one).
        device: where the teacher lives (e.g. ``"cuda:1"``); default CPU.
        precision: ``auto`` (bf16 autocast on CUDA or inside a bf16 autocast region), ``bf16`` or ``fp32``.
        **kwargs: timm constructor overrides (e.g. ``embed_dim``, ``depth`` for a small random teacher).
    """
    spec = get_teacher_spec(name)
    if name in _BUILDERS:
        teacher = _BUILDERS[name](name, weights, img_size or spec.img_size, kwargs, precision)
        return teacher.to(device) if device is not None else teacher
    if spec.factory == "student":
        if weights is None:
            raise ValueError(f"teacher {name}: needs weights=PATH to a student checkpoint (eupe/run_distill.py)")
        model, meta = load_student(weights)
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        size = img_size or meta.get("img_size") or spec.img_size
        source = str(weights)
    elif spec.factory == "eupe":
        model = create_model(spec.arch, weights=weights, **kwargs)
        cfg = model.pretrained_cfg
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        size = img_size or spec.img_size
        source = str(getattr(model, "weights_source", weights or "random"))
    else:
        if img_size is not None:
            kwargs = dict(kwargs, img_size=img_size)  # build fixed-grid models (SAM, SigLIP) at that size
        model, source = _load_timm(spec, name, weights, kwargs)
        cfg = model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
        size = img_size or spec.img_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    teacher = Teacher(name=name, model=model, img_size=size, mean=mean, std=std, weights_source=source,
                      precision=precision)
    return teacher.to(device) if device is not None else teacher
