"""EUPE encoders (through timm) and the EUPE distillation recipe. Knows nothing about driving."""
from eupe.models import MODELS, WeightsError, count_parameters, create_model, model_names

__all__ = ["MODELS", "WeightsError", "count_parameters", "create_model", "model_names"]
