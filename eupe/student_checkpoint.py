"""Reading the self-describing student checkpoint (format ``eupe-student``, see ``eupe.distill.export``).

The readers live apart from the writer so that ``eupe.models`` can load a student's weights without importing
the distillation package (which builds models with ``eupe.models``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

FORMAT_NAME = "eupe-student"
FORMAT_VERSION = 1
METADATA_KEY = "eupe_student"


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
