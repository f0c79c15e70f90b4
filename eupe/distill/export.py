"""Self-describing student checkpoint: one safetensors file, no pickles.

Format ``eupe-student`` version 1
---------------------------------
A single ``.safetensors`` file. Tensors:

- ``student.<key>``     the student's timm state dict (weights of the encoder only)
- ``normalizer.<name>`` the frozen teacher-feature normaliser statistics, e.g.
  ``normalizer.dinov3-b.summary.mean`` (informative: a user of the encoder does not need them)
- ``heads.<key>``       optional adaptor heads (``include_heads``); absent in a clean export

The safetensors header metadata holds one key, ``eupe_student``, whose value is a JSON object::

    {"format": "eupe-student", "version": 1,
     "model_name": "vit_small_patch16_dinov3",   # a timm model name, or an eupe short name ("eupe-s")
     "factory": "timm" | "eupe",                  # which constructor rebuilds it
     "timm_kwargs": {...},                        # JSON kwargs passed to the constructor
     "mean": [...], "std": [...],                 # input normalisation the student was trained with
     "img_size": 256, "patch_size": 16,
     "recipe": {...},                             # stage, teachers, losses, steps: free-form JSON
     "has_heads": false}

``load_student(path)`` rebuilds the model with ``timm.create_model(model_name, pretrained=False,
**timm_kwargs)`` (or ``eupe.create_model(model_name, weights=None, **timm_kwargs)``), loads the ``student.*``
tensors strictly, and returns ``(model, meta)``; ``meta`` is the JSON object above plus
``meta["normalizer"]`` (a dict of tensors) and ``meta["path"]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from eupe.atomic_io import atomic_path
from eupe.models import IMAGENET_MEAN, IMAGENET_STD

FORMAT_NAME = "eupe-student"
FORMAT_VERSION = 1
METADATA_KEY = "eupe_student"


def _factory_for(model_name: str) -> str:
    """Short EUPE / DINOv3 names go through ``eupe.create_model``; anything else is a timm name."""
    if model_name.startswith(("eupe-", "dinov3-")):
        return "eupe"
    return "timm"


def build_student_model(model_name: str, timm_kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Build an untrained student ``model_name`` (timm name or eupe short name) with ``timm_kwargs``."""
    kwargs = dict(timm_kwargs or {})
    if _factory_for(model_name) == "eupe":
        from eupe.models import create_model  # lead's module; imported lazily

        return create_model(model_name, weights=None, **kwargs)
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"student model {model_name!r} is not a timm model name nor an eupe short name "
                         f"(eupe-t/s/b, eupe-convnext-t/s/b, dinov3-*); see timm.list_models()")
    return timm.create_model(model_name, pretrained=False, **kwargs)


def save_student(
    path: str | Path,
    model_name: str,
    timm_kwargs: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    normalizer_stats: dict[str, torch.Tensor],
    recipe: dict[str, Any],
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    img_size: int | None = None,
    patch_size: int | None = None,
    heads_state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a student checkpoint to ``path`` (``.safetensors``) and return the path.

    ``state_dict``: the student encoder's weights (no heads). ``normalizer_stats``: flat name -> tensor.
    ``recipe`` and ``timm_kwargs`` must be JSON-serialisable. ``heads_state_dict`` adds the adaptor heads.
    """
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_name": model_name,
        "factory": _factory_for(model_name),
        "timm_kwargs": dict(timm_kwargs),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "img_size": img_size,
        "patch_size": patch_size,
        "recipe": recipe,
        "has_heads": heads_state_dict is not None,
    }
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"student checkpoint {path}: timm_kwargs / recipe must be JSON-serialisable ({err})") from err
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (("student.", state_dict), ("normalizer.", normalizer_stats), ("heads.", heads_state_dict or {})):
        for key, value in sd.items():
            # safetensors refuses shared / non-contiguous storage: store independent contiguous copies
            tensors[prefix + key] = value.detach().to("cpu").contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: meta_json})
    return path


def read_student_meta(path: str | Path) -> dict[str, Any]:
    """Return the JSON metadata of a student checkpoint (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint {path} does not exist; write one with eupe/run_distill.py")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as err:  # safetensors raises its own error types for foreign / corrupt files
        raise ValueError(f"student checkpoint {path} is not a safetensors file ({err})") from err
    if raw is None:
        raise ValueError(f"student checkpoint {path} has no '{METADATA_KEY}' metadata: not written by "
                         "eupe.distill.export.save_student")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_NAME or int(meta.get("version", -1)) > FORMAT_VERSION:
        raise ValueError(f"student checkpoint {path}: format {meta.get('format')!r} v{meta.get('version')} "
                         f"is not {FORMAT_NAME!r} v<={FORMAT_VERSION}")
    return meta


def load_student_tensors(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Return ``({"student": sd, "normalizer": stats, "heads": sd}, meta)`` from a student checkpoint."""
    meta = read_student_meta(path)
    groups: dict[str, dict[str, torch.Tensor]] = {"student": {}, "normalizer": {}, "heads": {}}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            prefix, _, rest = key.partition(".")
            if prefix in groups:
                groups[prefix][rest] = f.get_tensor(key)
    return groups, meta


def load_student_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The student encoder's flat state dict (no heads, no normaliser) from a student checkpoint."""
    groups, _ = load_student_tensors(path)
    return groups["student"]


def is_student_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a safetensors file carrying ``eupe_student`` metadata."""
    try:
        read_student_meta(path)
    except (ValueError, FileNotFoundError):
        return False
    return True


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
