"""RAP as a NAVSIM agent: sensor config, feature/target builders, forward, RAP losses, optimisers.

Reference: vita-epfl/RAP ``navsim/agents/rap_dino/rap_agent.py`` (sensor config: current frame of cam_f0,
cam_l0, cam_r0, cam_b0; ``rap_loss``; ``get_optimizers``: AdamW lr 1e-4, weight decay 1e-4,
``WarmupCosLR(min_lr=1e-5, epochs=20, warmup_epochs=1)``) and autonomousvision/navsim
``navsim/agents/abstract_agent.py`` (the agent API).

The planner (``rap_backbone.planner``) takes RAP's feature dict and returns ``trajectory``, ``proposals``,
``proposal_list``, ``pred_logit``, ``pdm_score`` and, in training mode, the auxiliary heads. The PDM
sub-scores of the model's own proposals (score BCE), the colliding agents and the ego-area flags come from
a ``ProposalScorer`` built on the training split's metric cache; without one those terms are off and the
loss dict says so (``score_supervision`` 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from eupe.config_tree import config_dir, config_file
from navsim_agents.agents.abstract_agent import AbstractAgent
from navsim_agents.agents.rap_callbacks import BackboneFeatureMemo, TrainingProgress
from navsim_agents.agents.rap_features import (
    RAPFeatureBuilder,
    RAPTargetBuilder,
)
from navsim_agents.agents.rap_loss import (
    RAPLossWeights,
    area_loss,
    collision_losses,
    imitation_weights,
    score_losses,
    trajectory_loss,
)
from rap_backbone.alignment import AlignmentConfig, alignment_losses
from rap_backbone.backbones import OnnxBackbone
from rap_backbone.nuplan_rig import CAMERA_NAMES, RAP_CAMERA_NAMES
from rap_backbone.planner_config import RAP_IMAGE_SCALE, PlannerGroupConfig, planner_profile

logger = logging.getLogger(__name__)

# RAP rap_agent.py: SensorConfig(cam_f0=[3], cam_l0=[3], cam_r0=[3], cam_b0=[3]) -> current frame only
CURRENT_FRAME_INDEX = 3


@dataclass
class ProposalScores:
    """What the score, collision and area losses need for a batch of proposals ``[B, N, T, 3]``.

    ``sub_scores [B,N,6]``: PDM (NC, DAC, EP, TTC, C, score); ``ego_areas [B,N,K,2]`` (off-road,
    oncoming) per 0.1 s step; ``agent_corners [B,N,K,2,4,2]`` / ``agent_valid [B,N,K,2]``: the at-fault
    collision and TTC agents' corners in the ego frame. The last three may be None.
    """

    sub_scores: np.ndarray
    ego_areas: Optional[np.ndarray] = None
    agent_corners: Optional[np.ndarray] = None
    agent_valid: Optional[np.ndarray] = None


class ProposalScorer(Protocol):
    def __call__(self, tokens: Sequence[str], proposals: np.ndarray) -> ProposalScores: ...


def rap_sensor_config() -> Any:
    """The sensors RAP reads: its four cameras at the current frame, no lidar."""
    from navsim_agents.data.dataclasses import SensorConfig

    cams: dict[str, list[int]] = {name: [] for name in CAMERA_NAMES}
    for name in RAP_CAMERA_NAMES:
        cams[name] = [CURRENT_FRAME_INDEX]
    return SensorConfig(**cams, lidar_pc=[])


def warmup_cosine_factor(epoch: int, *, warmup_epochs: int, epochs: int, lr: float, min_lr: float) -> float:
    """LR multiplier of RAP's ``WarmupCosLR``: linear ``(e+1)/warmup`` then cosine from lr to min_lr."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = max(1, epochs - warmup_epochs)
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr


def _to_plain(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build_backbone_from_config(backbone: Any) -> nn.Module:
    """A Backbone module, or the ``backbone`` config group (name, weights, freeze, runtime, overrides) -> Backbone."""
    if isinstance(backbone, nn.Module):
        return backbone
    from rap_backbone.backbones import build_backbone

    cfg = dict(_to_plain(backbone))
    overrides = dict(cfg.pop("overrides", None) or {})
    name = cfg.pop("name")
    return build_backbone(name, weights=cfg.pop("weights", None), freeze=cfg.pop("freeze", True),
                          runtime=cfg.pop("runtime", "torch"), **overrides)


def load_planner_profile(planner: Any) -> PlannerGroupConfig:
    """The ``planner`` config group (a node, a mapping, or a name in configs/planner/ when the primary config
    has no planner group) over the schema's defaults."""
    if isinstance(planner, str):
        planner = OmegaConf.load(config_file("planner", planner))
    return planner_profile(_to_plain(planner))


def build_planner_from_config(planner: Any, backbone: nn.Module) -> nn.Module:
    """A planner module, or the ``planner`` config group -> ``rap_backbone.planner.RAPPlanner``."""
    if isinstance(planner, nn.Module):
        return planner
    from rap_backbone import planner as planner_module

    profile = load_planner_profile(planner)
    return planner_module.build_planner(backbone, profile.planner_config(), seed=profile.seed)


# the sizes that tell planner configs apart (configs/planner/*.yaml) and that a checkpoint's shapes reveal
PLANNER_SIZE_FIELDS = ("d_model", "d_ffn", "num_bev_layers", "num_proposals", "num_poses")


def planner_size_in(state: Mapping[str, torch.Tensor]) -> dict[str, int] | None:
    """The `PLANNER_SIZE_FIELDS` of the planner stored in one of our checkpoints (None when it holds none)."""
    from rap_backbone import checkpoints

    try:
        cfg = checkpoints.infer_own_config(state, checkpoints.find_planner_prefix(state))
    except (KeyError, ValueError):
        return None
    return {k: getattr(cfg, k) for k in PLANNER_SIZE_FIELDS}


def _sizes(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sizes.items())


def _planner_groups_of(sizes: Mapping[str, int]) -> str:
    """``planner=<name>`` of the configs/planner/*.yaml with these sizes, or a note that none has them."""
    # the yamls state only what their size changes: read each composed over the schema's defaults
    names = [p.stem for p in sorted((config_dir() / "planner").glob("*.yaml"))
             if all(getattr(load_planner_profile(p.stem), k) == v for k, v in sizes.items())]
    return " or ".join(f"planner={n}" for n in names) if names else "no configs/planner/*.yaml has these sizes"


class RAPAgent(AbstractAgent):
    """RAP planner with a swappable backbone, behind NAVSIM's agent API."""

    requires_scene = False

    def __init__(
        self,
        *,
        backbone: Any,
        planner: Any,
        trajectory_sampling: Any = None,
        image_scale: Optional[float] = None,
        missing_camera: str = "error",
        checkpoint: Optional[str] = None,
        checkpoint_backbone_config: Optional[str] = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        min_lr: float = 1e-5,
        warmup_epochs: int = 1,
        epochs: int = 20,
        loss_weights: Optional[Mapping[str, float]] = None,
        alignment: Optional[Mapping[str, float]] = None,
        proposal_scorer: Optional[ProposalScorer] = None,
        memo_backbone_features: bool = False,
    ):
        nn.Module.__init__(self)
        self._trajectory_sampling = trajectory_sampling
        self._num_poses = int(getattr(trajectory_sampling, "num_poses", None) or 8)
        if image_scale is None:  # the scale the planner size is meant for (planner/*.yaml image_scale)
            image_scale = RAP_IMAGE_SCALE if isinstance(planner, nn.Module) else load_planner_profile(planner).image_scale
        self._image_scale = float(image_scale)
        self._missing_camera = missing_camera
        self._checkpoint_path = checkpoint
        self._checkpoint_backbone_config = checkpoint_backbone_config
        self._lr, self._weight_decay, self._min_lr = float(lr), float(weight_decay), float(min_lr)
        self._warmup_epochs, self._epochs = int(warmup_epochs), int(epochs)
        self.loss_weights = RAPLossWeights(**dict(_to_plain(loss_weights) or {}))
        self.alignment = AlignmentConfig(**dict(_to_plain(alignment) or {}))
        self.proposal_scorer = proposal_scorer
        self.training_progress = 0.0  # epoch fraction of the run (TrainingProgress callback), drives DANN lambda
        self._memo_backbone_features = bool(memo_backbone_features)

        backbone_module = build_backbone_from_config(backbone)
        self.planner = build_planner_from_config(planner, backbone_module)
        self._feature_builder = RAPFeatureBuilder(image_scale=self._image_scale, missing_camera=missing_camera)
        self._target_builder = RAPTargetBuilder(num_poses=self._num_poses)
        self._loaded_from: Optional[str] = None
        if checkpoint:
            self.load_checkpoint(checkpoint)
        # planner.runtime=onnxruntime: eval calls run the exported file (weights and all), checked against the
        # config's planner; training and the torch parts (losses, alignment) keep the eager module
        self.exported_planner = None
        profile = None if isinstance(planner, nn.Module) else load_planner_profile(planner)
        if profile is not None and profile.runtime == "onnxruntime":
            from rap_backbone.planner_export import OnnxPlanner

            self.exported_planner = OnnxPlanner(profile.exported, expect=self.planner,
                                                threads=torch.get_num_threads())

    # ---------------------------------------------------------------- NAVSIM agent API
    def name(self) -> str:
        return "rap_agent"

    def initialize(self) -> None:
        """Weights are loaded at construction (``checkpoint=``); nothing else to do."""

    @property
    def backbone(self) -> nn.Module:
        return self.planner.backbone

    @property
    def weights_source(self) -> str:
        """Where the planner and backbone weights come from, for run reports."""
        if self.exported_planner is not None:
            info = self.exported_planner.info
            planner = (f"{self.exported_planner.path} (onnxruntime {info.get('precision', 'fp32')}, exported with "
                       f"backbone weights {info['weights_source']})")
        else:
            planner = self._loaded_from or "random (no agent.checkpoint)"
        backbone = getattr(self.backbone, "weights_source", "unknown")
        return f"planner: {planner}; backbone: {backbone}"

    def get_sensor_config(self) -> Any:
        return rap_sensor_config()

    def get_feature_builders(self) -> list:
        return [self._feature_builder]

    def get_target_builders(self) -> list:
        return [self._target_builder]

    def forward(self, features: Mapping[str, torch.Tensor], targets: Any = None) -> dict[str, torch.Tensor]:
        """RAP's feature dict (batched) -> the planner's output dict.

        Training batches with ``rendered_camera_feature`` and ``camera_valid`` (samples that have rasterized views
        and, where ``camera_valid``, real views) follow RAP's Raster-to-Real step: the planner runs on
        ``[rendered views of all B | real views of the valid ones]``; :meth:`compute_loss` adds the alignment.
        """
        if "rendered_camera_feature" in features:
            real_idx = _real_index(features)
            raster = {k: v for k, v in features.items() if k not in ("rendered_camera_feature", "camera_valid")}
            raster["camera_feature"] = features["rendered_camera_feature"]
            features = {k: torch.cat([raster[k], features[k][real_idx]]) for k in raster}
        if self.exported_planner is not None and not self.training:
            return self.exported_planner(features)
        return self.planner(dict(features))

    def compute_trajectory(self, agent_input: Any) -> Any:
        """One AgentInput -> ``Trajectory`` (8 poses at 0.5 s in the current ego frame)."""
        from navsim_agents.data.dataclasses import Trajectory

        self.eval()
        features = self._feature_builder.compute_features(agent_input)
        device = next(self.parameters()).device
        batch = {k: v.unsqueeze(0).to(device) for k, v in features.items()}
        with torch.no_grad():
            poses = self.forward(batch)["trajectory"].squeeze(0).float().cpu().numpy()
        if self._trajectory_sampling is None:
            return Trajectory(poses)
        return Trajectory(poses, self._trajectory_sampling)

    # ---------------------------------------------------------------- losses
    def compute_loss(self, features: Mapping[str, torch.Tensor], targets: Mapping[str, Any],
                     predictions: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RAP losses; returns a dict with ``loss`` and its terms (all scalars).

        For a Raster-to-Real batch (see :meth:`forward`) the task loss covers the raster and the real samples
        and the alignment terms (``alignment_spatial``, ``alignment_domain``, ``alignment_lambda``) are added.
        """
        if "rendered_camera_feature" not in features:
            return self._task_losses(targets, predictions)
        real_idx = _real_index(features)
        n_raster = int(features["camera_valid"].shape[0])
        both_targets = {k: (torch.cat([v, v[real_idx]]) if isinstance(v, torch.Tensor)
                            else list(v) + [v[i] for i in real_idx.tolist()]) for k, v in targets.items()}
        losses = self._task_losses(both_targets, predictions)
        align = self.alignment_loss(predictions["projected"], n_raster=n_raster, real_index=real_idx)
        losses["loss"] = losses["loss"] + align["loss"]
        losses.update(alignment_spatial=align["spatial"], alignment_domain=align["domain"],
                      alignment_lambda=align["lambda"])
        return losses

    def _task_losses(self, targets: Mapping[str, Any], predictions: Mapping[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        w = self.loss_weights
        target_traj = targets["trajectory"].to(predictions["proposals"].dtype)
        score_mask = targets.get("score_mask")
        if score_mask is None:
            score_mask = torch.ones(target_traj.shape[0], dtype=torch.bool, device=target_traj.device)
        score_mask = score_mask.bool().to(target_traj.device)
        proposal_list = predictions.get("proposal_list") or [predictions["proposals"]]
        sample_w = targets.get("imitation_weight")
        sample_w = imitation_weights(score_mask, w) if sample_w is None else sample_w.to(target_traj.device)
        traj, last_min = trajectory_loss(list(proposal_list), target_traj, sample_w, w)
        zero = traj * 0.0
        out = {"trajectory_loss": traj, "min_loss": last_min, "sub_score_loss": zero, "final_score_loss": zero,
               "pred_ce_loss": zero, "pred_l1_loss": zero, "pred_area_loss": zero,
               "score_supervision": zero.detach()}
        if self.proposal_scorer is not None and bool(score_mask.any()) and predictions.get("pred_logit") is not None:
            out.update(self._score_terms(targets, predictions, score_mask))
        out["loss"] = (w.trajectory * traj + w.sub_score * out["sub_score_loss"]
                       + w.final_score * out["final_score_loss"] + w.collision_ce * out["pred_ce_loss"]
                       + w.collision_l1 * out["pred_l1_loss"] + w.area * out["pred_area_loss"])
        with torch.no_grad():
            chosen = predictions["trajectory"]
            out["l2"] = torch.linalg.norm(chosen[..., :2] - target_traj[..., :2], dim=-1).mean()
        return out

    def _score_terms(self, targets: Mapping[str, Any], predictions: Mapping[str, torch.Tensor],
                     score_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = torch.nonzero(score_mask).squeeze(-1)
        tokens = [targets["token"][i] for i in idx.tolist()]
        proposals = predictions["proposals"][idx].detach().float().cpu().numpy()
        scores = self.proposal_scorer(tokens, proposals)
        dev = predictions["pred_logit"].device
        target_scores = torch.as_tensor(scores.sub_scores, dtype=torch.float32, device=dev)
        pred_logit = predictions["pred_logit"][idx].float()
        sub, final = score_losses(pred_logit, target_scores)
        out = {"sub_score_loss": sub, "final_score_loss": final, "score_supervision": sub.new_tensor(1.0)}
        chosen = torch.argmax(predictions["pdm_score"][idx].detach(), dim=1)
        out["score"] = target_scores[torch.arange(len(idx), device=dev), chosen, -1].mean()
        out["best_score"] = target_scores[..., -1].amax(-1).mean()
        states = predictions.get("pred_agents_states")
        if states is not None and scores.agent_corners is not None:
            ce, l1 = collision_losses(states[idx].float(),
                                      torch.as_tensor(scores.agent_corners, dtype=torch.float32, device=dev),
                                      torch.as_tensor(scores.agent_valid, dtype=torch.bool, device=dev))
            out["pred_ce_loss"], out["pred_l1_loss"] = ce, l1
        area = predictions.get("pred_area_logit")
        if area is not None and scores.ego_areas is not None:
            gt = torch.as_tensor(scores.ego_areas, dtype=torch.bool, device=dev)
            out["pred_area_loss"] = area_loss(area.reshape(score_mask.shape[0], -1)[idx].float(), gt)
        return out

    def alignment_loss(self, projected: torch.Tensor, *, n_raster: int, real_index: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """Raster-to-Real terms on the planner's projected camera features (see rap_backbone.alignment)."""
        return alignment_losses(projected, n_raster=n_raster, real_index=real_index,
                                classifier=self.planner.domain_classifier, progress=self.training_progress,
                                config=self.alignment)

    # ---------------------------------------------------------------- optimisation
    def get_optimizers(self) -> dict[str, Any]:
        """AdamW over trainable parameters + RAP's per-epoch warmup-cosine schedule."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self._lr, weight_decay=self._weight_decay)
        factor = _WarmupCosine(warmup_epochs=self._warmup_epochs, epochs=self._epochs, lr=self._lr,
                               min_lr=self._min_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def get_training_callbacks(self) -> list:
        """The DANN progress of the run and, with ``memo_backbone_features``, the backbone-feature memo."""
        callbacks: list = [TrainingProgress(self)]
        if self._memo_backbone_features:
            callbacks.append(BackboneFeatureMemo(self))
        return callbacks

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: str | Path) -> None:
        """Load our Lightning checkpoint (keys ``agent.planner.*`` of this class) or RAP's released one.

        RAP's layout (``agent._rap_model.*``, DINOv3 inside) goes through ``rap_backbone.checkpoints`` and
        replaces the planner (its backbone comes from the checkpoint; ``checkpoint_backbone_config`` names the
        DINOv3 config when it is not RAP's ViT-H+/16). Our own checkpoints load strictly; backbone tensors may
        be absent (the backbone then keeps the weights of ``backbone.weights``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"agent.checkpoint={path} does not exist; pass a .ckpt written by "
                                    "run_training.py or RAP's released checkpoint")
        from rap_backbone import checkpoints

        try:
            state = checkpoints.read_checkpoint_state(path)
        except ValueError as err:
            raise ValueError(f"agent.checkpoint={path} is not a checkpoint: {err}") from None
        if any(k.startswith(checkpoints.RAP_PREFIX) for k in state):
            self.planner = checkpoints.load_rap_checkpoint(path, backbone_config=self._checkpoint_backbone_config)
        else:
            own = {k.removeprefix("agent."): v for k, v in state.items() if k.startswith("agent.")} or dict(state)
            held = planner_size_in(own)
            mine = {k: getattr(self.planner.config, k) for k in PLANNER_SIZE_FIELDS}
            if held is not None and held != mine:
                raise KeyError(f"agent.checkpoint={path} holds a planner of {_sizes(held)} "
                               f"({_planner_groups_of(held)}); this run builds {_sizes(mine)} "
                               f"({_planner_groups_of(mine)}): pass the planner the checkpoint was trained with")
            try:
                missing, unexpected = self.load_state_dict(own, strict=False)
            except RuntimeError as err:  # shape mismatches (e.g. another backbone width)
                raise KeyError(f"checkpoint {path} does not match this agent ({str(err).splitlines()[-1].strip()}); "
                               "check that backbone= and planner= match the run that wrote it") from None
            backbone_keys = {f"planner.backbone.{k}" for k in self.planner.backbone.state_dict()}
            missing = [k for k in missing if k not in backbone_keys]
            if isinstance(self.planner.backbone, OnnxBackbone):
                # the exported encoder holds its own weights (exported from this checkpoint's backbone tensors
                # with run_export.py checkpoint=...); the checkpoint's copies have nowhere to go
                unexpected = [k for k in unexpected if not k.startswith("planner.backbone.")]
            if missing or unexpected:
                raise KeyError(f"checkpoint {path} does not match this agent: missing {missing[:10]}"
                               f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                               f"{' ...' if len(unexpected) > 10 else ''}; check that backbone= and planner= "
                               "match the run that wrote it")
        self._loaded_from = str(path)


def _real_index(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Indices of the samples of a Raster-to-Real batch that also have real views."""
    return torch.nonzero(features["camera_valid"].bool().reshape(-1)).squeeze(-1)


class _WarmupCosine:
    """Picklable LambdaLR factor (Lightning checkpoints the scheduler state)."""

    def __init__(self, *, warmup_epochs: int, epochs: int, lr: float, min_lr: float):
        self.warmup_epochs, self.epochs, self.lr, self.min_lr = warmup_epochs, epochs, lr, min_lr

    def __call__(self, epoch: int) -> float:
        return warmup_cosine_factor(epoch, warmup_epochs=self.warmup_epochs, epochs=self.epochs, lr=self.lr,
                                    min_lr=self.min_lr)
