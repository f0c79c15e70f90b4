"""EUPE encoders (through timm) and the EUPE distillation recipe. Knows nothing about driving.

The model API is loaded on first use (it imports torch and timm), so that light modules of the package
(``eupe.atomic_io``, ``eupe.config_tree``, ``eupe.config_errors``) stay light for the command-line tools of
the layers above.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MODELS", "WeightsError", "count_parameters", "create_model", "model_names"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from eupe import models

        return getattr(models, name)
    raise AttributeError(f"module 'eupe' has no attribute {name!r}")
