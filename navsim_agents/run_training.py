"""Train a NAVSIM agent (RAP by default) with Hydra + PyTorch Lightning.

    python navsim_agents/run_training.py backbone=eupe-t split=navmini_train trainer.max_epochs=5
    python navsim_agents/run_training.py ... trainer.devices=8 trainer.num_nodes=4      # DDP
    python navsim_agents/run_pdm_score.py agent.checkpoint=<output_dir>/checkpoints/last.ckpt

Follows autonomousvision/navsim ``navsim/planning/script/run_training.py``: the agent's feature and target
builders are run once per token and cached on disk (``cache_path``, safe ``torch.load(weights_only=True)``
files keyed by the builders' settings), then Lightning trains from the cache. Precision is bf16-mixed on
GPU and 32-bit on CPU unless ``trainer.precision`` says otherwise; a checkpoint is written every epoch and a
rerun of the same command resumes from ``last.ckpt``. Tokens whose features cannot be built (missing camera,
NaN ego status) are recorded in ``<output_dir>/failed_tokens.json`` and skipped.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from eupe.atomic_io import atomic_path, atomic_write_text
from eupe.config_errors import RunFailed, exit_on_run_errors
from eupe.config_tree import hydra_config_path
from navsim_agents.data.splits import build_scene_loader
from rap_backbone.planner_config import register_planner_schema

register_planner_schema()  # configs/planner/*.yaml extend planner/schema, also when run as a script

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------ data
def cache_entry_problem(path: Path) -> str | None:
    """Why the cached ``.pt`` at ``path`` cannot be used (None when its zip directory reads: an interrupted or
    emptied write loses the directory at the end of the file, so this finds them without loading tensors)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "empty archive"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def builder_fingerprint(builders: Sequence[Any]) -> str:
    """A folder name that changes whenever a builder's settings change (so stale caches are never read)."""
    parts = [f"v{CACHE_FORMAT_VERSION}"]
    for b in builders:
        settings = {k: v for k, v in sorted(vars(b).items()) if isinstance(v, (int, float, str, bool, tuple))}
        parts.append(b.get_unique_name() + "-" + "-".join(f"{k}={v}" for k, v in settings.items()))
    import hashlib

    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


class CachedFeatureDataset(Dataset):
    """(features, targets) per token, computed once with the agent's builders and cached under
    ``cache_path/<fingerprint>/<token>.pt``. Tokens that fail are recorded in ``failed`` and left out."""

    def __init__(self, scene_loader: Any, feature_builders: Sequence[Any], target_builders: Sequence[Any],
                 cache_path: str | Path, *, force_cache_computation: bool = False):
        self._loader = scene_loader
        self._features, self._targets = list(feature_builders), list(target_builders)
        self.cache_dir = Path(cache_path) / builder_fingerprint(self._features + self._targets)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.failed: dict[str, str] = {}
        self.tokens: list[str] = []
        for token in scene_loader.tokens:
            path = self.cache_dir / f"{token}.pt"
            problem = cache_entry_problem(path) if path.is_file() and not force_cache_computation else None
            if problem:
                logger.warning("feature cache %s (token %s) cannot be read (%s); rebuilding it", path, token, problem)
            if force_cache_computation or not path.is_file() or problem:
                try:
                    self._compute_and_write(token, path)
                except (ValueError, RuntimeError, OSError, KeyError) as error:
                    self.failed[token] = f"{type(error).__name__}: {error}"
                    logger.warning("token %s skipped: %s", token, error)
                    continue
            self.tokens.append(token)

    def add_augmented(self, *, perturb_fraction: float, cross_agent_fraction: float, seed: int,
                      max_agents_per_scene: int | None = None) -> int:
        """RAP's augmentations as dataset options (``navsim_agents.agents.rap_augment``): a recovery-perturbed copy of
        ``perturb_fraction`` of the tokens and ``cross_agent_fraction`` of the cross-agent samples, re-rendered
        with the rasterizer and cached like the rest. Returns the number of samples added."""
        from navsim_agents.agents.rap_augment import cross_agent_samples, perturbed_sample

        if perturb_fraction <= 0 and cross_agent_fraction <= 0:
            return 0
        rng = np.random.default_rng(seed)
        folder = self.cache_dir / f"augmented-p{perturb_fraction}-c{cross_agent_fraction}-s{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        num_poses = getattr(self._targets[0], "num_poses", 8)
        added = 0
        base_tokens = list(self.tokens)
        for token in base_tokens:
            jobs = []
            if rng.random() < perturb_fraction:
                jobs.append("perturbed")
            if rng.random() < cross_agent_fraction:  # per scene, keeps the expected share of samples
                jobs.append("cross_agent")
            for kind in jobs:
                marker = folder / f"{token}_{kind}.done"
                damaged = [p for p in sorted(folder.glob(f"{token}_{kind}_*.pt")) if cache_entry_problem(p)]
                if damaged and marker.is_file():
                    logger.warning("augmented cache %s cannot be read; rebuilding the %s samples of token %s",
                                   damaged[0], kind, token)
                    marker.unlink()
                if not marker.is_file():
                    try:
                        scene = self._loader.get_scene_from_token(token)
                        # the perturbation has its own stream per token: which samples exist must not depend
                        # on which of them were already cached (the selection draws above stay in step)
                        own_rng = np.random.default_rng([seed, zlib.crc32(token.encode())])
                        samples = [perturbed_sample(scene, own_rng, num_poses=num_poses)] if kind == "perturbed" else \
                            cross_agent_samples(scene, num_poses=num_poses, max_agents=max_agents_per_scene)
                        for i, (agent_input, targets) in enumerate(samples):
                            features: dict[str, Any] = {}
                            for b in self._features:
                                features.update(b.compute_features(agent_input, token=targets["token"])
                                                if _takes_token(b) else b.compute_features(agent_input))
                            with atomic_path(folder / f"{token}_{kind}_{i}.pt") as tmp:
                                torch.save({"features": features, "targets": targets}, tmp)
                    except (ValueError, RuntimeError, OSError, KeyError) as error:
                        self.failed[f"{token}:{kind}"] = f"{type(error).__name__}: {error}"
                        logger.warning("augmented %s sample of %s skipped: %s", kind, token, error)
                        continue
                    marker.touch()
                for path in sorted(folder.glob(f"{token}_{kind}_*.pt")):
                    self.tokens.append(str(path.relative_to(self.cache_dir).with_suffix("")))
                    added += 1
        return added

    def drop(self, failed: Mapping[str, str]) -> None:
        """Leave out tokens that failed elsewhere (e.g. their metric cache), recording why."""
        self.failed.update(failed)
        self.tokens = [t for t in self.tokens if t not in failed]

    def _compute_and_write(self, token: str, path: Path) -> None:
        scene = self._loader.get_scene_from_token(token)
        agent_input = scene.get_agent_input() if hasattr(scene, "get_agent_input") else \
            self._loader.get_agent_input_from_token(token)
        features: dict[str, Any] = {}
        for b in self._features:
            features.update(b.compute_features(agent_input, token=token) if _takes_token(b) else
                            b.compute_features(agent_input))
        targets: dict[str, Any] = {}
        for b in self._targets:
            targets.update(b.compute_targets(scene))
        with atomic_path(path) as tmp:  # per-process temporary file: DDP ranks build the same cache
            torch.save({"features": features, "targets": targets}, tmp)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, idx: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        path = self.cache_dir / f"{self.tokens[idx]}.pt"
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # corrupt cache file: name it and say how to fix it
            raise RuntimeError(f"corrupt feature cache file {path}: {error}; delete it or rerun with "
                               "force_cache_computation=true") from error
        return data["features"], data["targets"]


def _takes_token(builder: Any) -> bool:
    import inspect

    return "token" in inspect.signature(builder.compute_features).parameters


def collate(batch: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Stack tensors; keep strings (tokens) as lists."""
    def merge(dicts: list[dict]) -> dict:
        out = {}
        for k in dicts[0]:
            vals = [d[k] for d in dicts]
            out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
        return out

    return merge([b[0] for b in batch]), merge([b[1] for b in batch])


# ------------------------------------------------------------------------------------------- lightning
class AgentLightningModule(pl.LightningModule):
    """Step logic only, as NAVSIM's ``AgentLightningModule``: the agent's forward and loss, logging. The Trainer
    owns the loop; an agent's own training logic comes as the callbacks of ``agent.get_training_callbacks()``."""

    def __init__(self, agent: torch.nn.Module):
        super().__init__()
        self.agent = agent

    def _step(self, batch: tuple[dict, dict], prefix: str) -> torch.Tensor:
        features, targets = batch
        losses = self.agent.compute_loss(features, targets, self.agent.forward(features))
        if isinstance(losses, torch.Tensor):  # NAVSIM agents return the loss alone
            losses = {"loss": losses}
        bs = targets["trajectory"].shape[0]
        for k, v in losses.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                self.log(f"{prefix}/{k}", v.detach().float(), on_step=(prefix == "train"), on_epoch=True,
                         prog_bar=k in ("loss", "l2"), batch_size=bs, sync_dist=True)
        return losses["loss"]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        return self.agent.get_optimizers()


def _strategy(strategy: Any, devices: Any, num_nodes: Any) -> Any:
    """DDP with unused-parameter detection whenever several processes train (NAVSIM / RAP's
    ``default_training.yaml``: ``ddp_find_unused_parameters_true``): the domain classifier, the collision and
    area heads take no part in a step without alignment samples or score supervision, and plain DDP stops on
    parameters that got no gradient."""
    if strategy == "ddp":
        return "ddp_find_unused_parameters_true"
    if strategy not in (None, "auto"):
        return strategy
    if devices in (None, "auto"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 1
    elif isinstance(devices, (list, tuple)):
        count = len(devices)
    else:
        count = int(devices)
    return "ddp_find_unused_parameters_true" if count * int(num_nodes or 1) > 1 else "auto"


def _precision(cfg_precision: Any) -> str:
    if cfg_precision not in (None, "auto"):
        return str(cfg_precision)
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _loggers(output_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list = [CSVLogger(str(output_dir), name="csv")]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(output_dir), name="tensorboard"))
    except ModuleNotFoundError:
        logger.info("tensorboard is not installed: logging to CSV only (pip install tensorboard)")
    return loggers


def validate_config(cfg: DictConfig) -> None:
    """Check the settings before any work (ConfigError naming the setting)."""
    from navsim_agents import config_checks

    config_checks.check_seed(cfg.seed)
    config_checks.check_split(cfg.split, need_maps=bool(cfg.score_supervision))
    if cfg.get("val_split"):
        config_checks.check_split(cfg.val_split, need_maps=False)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns paths and counts (for scripts and tests)."""
    validate_config(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    agent = instantiate(cfg.agent, _convert_="partial")
    logger.info("agent weights: %s", getattr(agent, "weights_source", "unknown"))

    train_loader_scenes = build_scene_loader(cfg.split, agent.get_sensor_config())
    train_data = CachedFeatureDataset(train_loader_scenes, agent.get_feature_builders(),
                                      agent.get_target_builders(), cfg.cache_path,
                                      force_cache_computation=bool(cfg.force_cache_computation))
    if cfg.score_supervision:  # PDM scores of the model's own proposals need a metric cache per token
        from navsim_agents.agents.rap_scoring import build_training_scorer

        agent.proposal_scorer, cache_failed = build_training_scorer(cfg, train_loader_scenes, train_data.tokens)
        train_data.drop(cache_failed)
    aug = cfg.augmentation
    added = train_data.add_augmented(perturb_fraction=float(aug.perturb_fraction),
                                     cross_agent_fraction=float(aug.cross_agent_fraction), seed=int(aug.seed),
                                     max_agents_per_scene=aug.max_agents_per_scene)
    if added:
        logger.info("added %d augmented samples (recovery perturbation / cross-agent views)", added)
    failed_path = atomic_write_text(output_dir / "failed_tokens.json", json.dumps(train_data.failed, indent=1))
    if len(train_data) == 0:
        raise RunFailed(f"no trainable tokens in split {cfg.split.data_split}; see {failed_path}")
    logger.info("%d training tokens (%d failed, see %s)", len(train_data), len(train_data.failed), failed_path)

    val_loader = None
    if cfg.get("val_split"):
        val_scenes = build_scene_loader(cfg.val_split, agent.get_sensor_config())
        val_data = CachedFeatureDataset(val_scenes, agent.get_feature_builders(), agent.get_target_builders(),
                                        cfg.cache_path)
        val_loader = DataLoader(val_data, batch_size=cfg.dataloader.batch_size, shuffle=False,
                                num_workers=cfg.dataloader.num_workers, collate_fn=collate)
    train_loader = DataLoader(train_data, batch_size=cfg.dataloader.batch_size, shuffle=True,
                              num_workers=cfg.dataloader.num_workers, collate_fn=collate,
                              drop_last=len(train_data) > cfg.dataloader.batch_size)

    ckpt_dir = output_dir / "checkpoints"
    checkpoint_cb = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{epoch}-{step}", save_last=True,
                                                 save_top_k=int(cfg.checkpoint.save_top_k),
                                                 every_n_epochs=int(cfg.checkpoint.every_n_epochs))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = _precision(trainer_cfg.get("precision"))
    trainer_cfg["strategy"] = _strategy(trainer_cfg.get("strategy"), trainer_cfg.get("devices"),
                                        trainer_cfg.get("num_nodes"))
    module = AgentLightningModule(agent)
    trainer = pl.Trainer(**trainer_cfg, callbacks=[checkpoint_cb, *agent.get_training_callbacks()],
                         logger=_loggers(output_dir), default_root_dir=str(output_dir))
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if cfg.resume and last.is_file() else None
    if resume:
        logger.info("resuming from %s", resume)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume)
    return {"output_dir": output_dir, "last_checkpoint": last, "num_tokens": len(train_data),
            "failed": train_data.failed, "trainer": trainer, "module": module}


@hydra.main(config_path=hydra_config_path(), config_name="run_training", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    with exit_on_run_errors():
        result = train(cfg)
    print(where_it_is(result["last_checkpoint"], list(HydraConfig.get().overrides.task)))


# overrides of a training command that decide the model, so the scoring command must repeat them
MODEL_OVERRIDES = ("backbone", "+backbone", "planner", "+planner", "agent", "+agent")


def where_it_is(checkpoint: Path, overrides: Sequence[str]) -> str:
    """The closing lines of a training run: the checkpoint and the command that scores it (with the training
    command's overrides that decide the model)."""
    model = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in MODEL_OVERRIDES
             and not o.startswith("agent.checkpoint=")]
    command = ["python", "-m", "navsim_agents.run_pdm_score", *model, f"agent.checkpoint={Path(checkpoint).resolve()}"]
    return f"checkpoint: {checkpoint}\nscore it: {' '.join(command)}"


if __name__ == "__main__":
    main()
