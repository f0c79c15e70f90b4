"""RAP's training logic that runs beside the generic Lightning module (``RAPAgent.get_training_callbacks()``).

- :class:`TrainingProgress`: the run's progress ``(epoch + 1) / max_epochs`` that drives the DANN lambda of the
  Raster-to-Real domain loss (vita-epfl/RAP ``rap_model.py`` ``LambdaScheduler``; RAP's Lightning module sets
  it from ``current_epoch`` the same way).
- :class:`BackboneFeatureMemo`: a frozen, deterministic backbone gives the same features for the same cached
  images every epoch, so it runs once per token and its output is kept in memory (``backbone_patch``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


class TrainingProgress(pl.Callback):
    """Sets ``agent.training_progress`` to ``min(1, (epoch + 1) / max_epochs)`` before every epoch (training and
    validation); ``max_epochs`` unset or -1 counts as 1."""

    def __init__(self, agent: nn.Module) -> None:
        self.agent = agent

    def _set(self, trainer: pl.Trainer) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        self.agent.training_progress = min(1.0, (trainer.current_epoch + 1) / epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set(trainer)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._set(trainer)


class BackboneFeatureMemo(pl.Callback):
    """Adds ``backbone_patch`` to each training batch from a per-token memo (in the backbone's dtype, on the
    batch's device). Batches with rasterized views (Raster-to-Real) run the backbone as usual.

    Raises ValueError at construction when the backbone is trainable or random (LoRA, GridMask)."""

    def __init__(self, agent: nn.Module) -> None:
        if not agent.planner.backbone_is_deterministic:
            raise ValueError("agent.memo_backbone_features=true needs a frozen backbone without LoRA or GridMask "
                             "(backbone.freeze=true, planner.lora_rank=0, planner.grid_mask_prob=0)")
        self.agent = agent
        self.memo: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: tuple[dict, dict], batch_idx: int) -> None:
        features, targets = batch
        if "rendered_camera_feature" in features:
            return
        tokens = list(targets["token"])
        missing = [i for i, t in enumerate(tokens) if t not in self.memo]
        if missing:
            with torch.no_grad():
                patches = self.agent.planner.backbone_patch(features["camera_feature"][missing])
            for i, patch in zip(missing, patches, strict=True):
                self.memo[tokens[i]] = patch
        features["backbone_patch"] = torch.stack([self.memo[t] for t in tokens])
