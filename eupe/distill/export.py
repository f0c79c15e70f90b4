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

The readers (``read_student_meta``, ``load_student_tensors``, ``is_student_checkpoint``) are in
``eupe.student_checkpoint``; ``eupe.models.load_student(path)`` rebuilds the model with ``timm.create_model(model_name, pretrained=False,
**timm_kwargs)`` (or ``eupe.create_model(model_name, weights=None, **timm_kwargs)``), loads the ``student.*``
tensors strictly, and returns ``(model, meta)``; ``meta`` is the JSON object above plus
``meta["normalizer"]`` (a dict of tensors) and ``meta["path"]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from eupe.atomic_io import atomic_path
from eupe.models import student_factory
from eupe.student_checkpoint import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY


def save_student(
    path: str | Path,
    model_name: str,
    timm_kwargs: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    normalizer_stats: dict[str, torch.Tensor],
    recipe: dict[str, Any],
    *,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
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
        "factory": student_factory(model_name),
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
