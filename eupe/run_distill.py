"""Distil teachers into a student (Hydra + Lightning), or build the teacher-feature cache.

    python eupe/run_distill.py distill=tiny_cpu                       # smoke run on CPU, random teachers
    python eupe/run_distill.py distill=tiny_cpu cache=build && python eupe/run_distill.py distill=tiny_cpu cache=read
    python eupe/run_distill.py distill=stage1_proxy trainer.devices=8 trainer.strategy=fsdp   # FSDP2
    python eupe/run_distill.py distill=tiny_cpu trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp
    python eupe/run_distill.py distill=tiny_cpu trainer.precision=bf16-mixed      # bf16 autocast, also on CPU
    python eupe/run_distill.py distill=stage2_student cache=build     # run teachers once, write features
    python eupe/run_distill.py distill=stage2_student cache=read      # train from the cache
    python eupe/run_distill.py distill=stage3_multires                # initialised from stage 2

A run writes ``<output_dir>/checkpoints/last.ckpt`` (resumed automatically when present), CSV logs, and at
the end ``<output_dir>/student.safetensors`` (``eupe.distill.export`` format, loadable by
``build_backbone("student", weights=PATH)``) with ``config.json``, the configuration that made it.

A finished stage folder is never rewritten by another configuration: a run whose settings differ from the
folder's ``config.json`` (other than ``distill.max_steps``, which continues the same run) stops before any
work unless ``overwrite=true``.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from pathlib import Path
from typing import Sequence

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from eupe.atomic_io import atomic_write_text
from eupe.config_errors import ConfigError, exit_on_run_errors
from eupe.config_tree import hydra_config_path
from eupe.distill.cache import CachedDistillDataset, CachePlan, CacheWriter, TeacherCache
from eupe.distill.compress import FeatureStorage
from eupe.distill.data import (
    AugmentConfig,
    DistillDataModule,
    DistillImageDataset,
    build_source,
    collate_samples,
    make_plan,
    source_shares,
)
from eupe.distill.module import DistillModule
from eupe.seeding import seed_everything

log = logging.getLogger(__name__)
CACHE_MODES = ("online", "build", "read")
RUN_RECORD = "config.json"
# settings that continue or merely watch the run recorded in a finished folder, not another recipe
CONTINUATION_KEYS = ("distill.max_steps", "resume", "overwrite", "trainer.progress_bar", "trainer.log_every_n_steps",
                     "trainer.checkpoint_every_n_steps")


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules that register teachers / data sources of higher layers (``plugins`` in the config)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"plugins: cannot import {name!r} ({err}); fix the name or remove it from plugins") from err


def build_dataset(d: DictConfig) -> DistillImageDataset:
    """The image dataset of a distill config (sources + augmentation)."""
    source = build_source(OmegaConf.to_container(d.data.sources, resolve=True))
    aug = AugmentConfig.from_dict(OmegaConf.to_container(d.data.augment, resolve=True))
    return DistillImageDataset(source, size=int(d.data.image_size), aug=aug, seed=int(d.seed))


def _shares(d: DictConfig) -> list[float] | None:
    return source_shares(OmegaConf.to_container(d.data.sources, resolve=True))


def build_module(d: DictConfig, *, teacher_dims: dict | None = None) -> DistillModule:
    """The LightningModule of a distill config."""
    return DistillModule(
        student_name=d.student.name, student_kwargs=OmegaConf.to_container(d.student.kwargs, resolve=True),
        teachers=OmegaConf.to_container(d.teachers, resolve=True), teacher_dims=teacher_dims,
        head_hidden=int(d.heads.hidden), normalizer=d.normalizer.mode, normalizer_warmup=int(d.normalizer.warmup_iters),
        student_size=int(d.student.size), student_pyramid=list(d.student.pyramid or []),
        teacher_pyramid=list(d.teacher_pyramid or []), lr=float(d.optim.lr), weight_decay=float(d.optim.weight_decay),
        betas=tuple(d.optim.betas), warmup_steps=int(d.optim.warmup_steps), max_steps=int(d.max_steps),
        min_lr_ratio=float(d.optim.min_lr_ratio), patch_cos_weight=float(d.loss.patch_cos_weight),
        patch_smooth_l1_weight=float(d.loss.patch_smooth_l1_weight), ema_decay=float(d.ema_decay),
        grad_checkpointing=bool(d.grad_checkpointing), init_from=d.init_from,
        recipe={"stage": d.stage, "batch_size": int(d.batch_size), "max_steps": int(d.max_steps),
                "optim": OmegaConf.to_container(d.optim, resolve=True)}, seed=int(d.seed))


# Lightning's own refusal of FSDP1 off CUDA (pytorch_lightning/trainer/connectors/accelerator_connector.py), and
# torch's if that check is bypassed (torch/distributed/fsdp/_init_utils.py, _init_device_handle).
FSDP1_NEEDS_CUDA = ("The strategy `fsdp` requires a GPU accelerator", "FSDP needs a non-CPU accelerator device")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp", "fsdp1")


def _strategy(cfg: DictConfig, module: DistillModule):
    """The Lightning strategy of ``trainer.strategy``.

    ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``, one shard group per student block, see
    ``DistillModule.configure_model``) through Lightning's ``ModelParallelStrategy`` with pure data parallelism;
    runs on CUDA (NCCL) and on CPU (gloo). Checkpoints are gathered into one file on rank 0 so ``last.ckpt``
    resumes under any strategy. ``fsdp1``: Lightning's ``FSDPStrategy`` (torch FSDP1), CUDA only.
    Other names (``ddp``, ``ddp_spawn``, ``auto``, ...) pass through to Lightning.
    """
    name = str(cfg.trainer.strategy)
    if name == "fsdp":
        from pytorch_lightning.strategies import ModelParallelStrategy

        class DataParallelFSDP2(ModelParallelStrategy):
            """ModelParallelStrategy with every process in one data-parallel (sharding) group, no tensor
            parallelism (its "auto" sizes would make the processes of a node a tensor-parallel group)."""

            def setup_environment(self) -> None:
                self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
                super().setup_environment()

        return DataParallelFSDP2(save_distributed_checkpoint=False)
    if name != "fsdp1":
        return name
    accelerator = str(cfg.trainer.accelerator)
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        raise ValueError(f"trainer.strategy=fsdp1 (Lightning FSDPStrategy, torch FSDP1) needs CUDA GPUs: Lightning "
                         f"refuses it on CPU ('{FSDP1_NEEDS_CUDA[0]}') and torch FSDP1 itself stops with "
                         f"'{FSDP1_NEEDS_CUDA[1]}'. Use trainer.strategy=fsdp (FSDP2, also runs on CPU) or ddp.")
    from pytorch_lightning.strategies import FSDPStrategy

    blocks = getattr(module.student, "blocks", None) or getattr(module.student, "stages", None)
    policy = {type(blocks[0])} if blocks is not None and len(blocks) else None
    return FSDPStrategy(auto_wrap_policy=policy)


def _precision(cfg: DictConfig) -> str:
    if cfg.trainer.precision != "auto":
        return str(cfg.trainer.precision)
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def cache_storage(cfg: DictConfig) -> FeatureStorage:
    """How ``cache=build`` stores teacher features (``cache_storage``, ``cache_pca``)."""
    try:
        return FeatureStorage(dtype=str(cfg.cache_storage), pca=cfg.cache_pca)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_cache(cfg: DictConfig) -> Path:
    """Run the teachers over ``cache.epochs`` epochs of augmented batches and write their features."""
    d = cfg.distill
    import_plugins(cfg.plugins)
    seed_everything(int(d.seed))  # random teachers (no weights) follow the seed: same seed, same cache
    dataset = build_dataset(d)
    module = build_module(d)  # for the per-step size draws and teacher construction
    teachers = module.teachers
    plan = make_plan(dataset, _shares(d), batch_size=int(d.batch_size), seed=int(d.seed))
    positions = plan.per_epoch * int(cfg.cache_epochs)
    writer = CacheWriter(
        cfg.cache_dir, teachers={c.key: {"name": c.name, "summary_dim": teachers[c.key].summary_dim,
                                         "patch_dim": teachers[c.key].patch_dim,
                                         "weights_source": teachers[c.key].weights_source}
                                 for c in module.teacher_configs},
        image_size=dataset.size, seed=int(d.seed), augment=dataset.aug, num_samples=len(dataset),
        batch_size=int(d.batch_size), shard_rows=int(cfg.cache_shard_rows), storage=cache_storage(cfg))
    start = writer.positions_done
    if start:
        log.info("cache %s: resuming after %d of %d batches", cfg.cache_dir, start, positions)
    skipped = 0
    for position in range(start, positions):
        batch = collate_samples([dataset[item] for item in plan.batch(position)])
        skipped += batch["skipped"]
        if batch["image"].shape[0] == 0:
            continue
        _, sizes = module.draw_sizes(position)
        feats = module.run_teachers(batch["image"], sizes)
        epoch = torch.full_like(batch["index"], position // plan.per_epoch)
        writer.add(index=batch["index"], epoch=epoch, aug=batch["aug"], features=feats,
                   sizes={k: int(sizes[k] or teachers[k].img_size) for k in feats}, position=position)
    path = writer.close()
    log.info("cache %s complete: %d rows, %d corrupt images skipped", cfg.cache_dir, writer.rows_done, skipped)
    return path


def build_training(cfg: DictConfig) -> tuple[DistillModule, DistillDataModule]:
    """The module and datamodule of a run (``cache=read``: cached features, teachers built only on demand).

    The datamodule holds only picklable parts (``functools.partial`` plan factories, not closures), because
    ``ddp_spawn`` pickles it into each worker."""
    d = cfg.distill
    import_plugins(cfg.plugins)
    dataset = build_dataset(d)
    bs, seed = int(d.batch_size), int(d.seed)
    if cfg.cache == "read":
        cache = TeacherCache(cfg.cache_dir)
        module = build_module(d, teacher_dims=cache.teacher_dims())
        train_set = CachedDistillDataset(cache, dataset)
        plan = functools.partial(CachePlan, [s["rows"] for s in cache.shards], batch_size=bs, seed=seed)
    else:
        module = build_module(d)
        train_set = dataset
        plan = functools.partial(make_plan, dataset, _shares(d), batch_size=bs, seed=seed)
    total = int(d.max_steps) * int(cfg.trainer.accumulate_grad_batches)
    datamodule = DistillDataModule(train_set, plan, total_batches=total, num_workers=int(d.data.num_workers),
                                   pin_memory=torch.cuda.is_available())
    return module, datamodule


def train(cfg: DictConfig, *, callbacks: tuple[pl.Callback, ...] = ()) -> Path:
    """Fit the student; resumes from ``<output_dir>/checkpoints/last.ckpt``; returns the exported student.

    Under DDP / FSDP every rank runs this; only rank 0 writes checkpoints and the exported student.
    ``callbacks`` are added to the trainer's own (checkpointing, LR monitor)."""
    d = cfg.distill
    out = Path(cfg.output_dir)
    pl.seed_everything(int(d.seed), workers=True)
    module, datamodule = build_training(cfg)
    accumulate = int(cfg.trainer.accumulate_grad_batches)
    ckpt_dir = out / "checkpoints"
    export = Path(cfg.export_path)
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:08d}", auto_insert_metric_name=False,
                                              every_n_train_steps=int(cfg.trainer.checkpoint_every_n_steps),
                                              save_last=True, save_top_k=1),
                 pl.callbacks.LearningRateMonitor(logging_interval="step"),
                 StudentExport(export, recipe={"cache": cfg.cache, "strategy": str(cfg.trainer.strategy),
                                               "precision": _precision(cfg)}),
                 *callbacks]
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator, num_nodes=int(cfg.trainer.num_nodes),
        devices=cfg.trainer.devices, strategy=_strategy(cfg, module), precision=_precision(cfg), max_steps=int(d.max_steps),
        accumulate_grad_batches=accumulate, gradient_clip_val=cfg.trainer.gradient_clip_val,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps), callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(out), name="logs"), use_distributed_sampler=False,
        enable_progress_bar=bool(cfg.trainer.progress_bar), default_root_dir=str(out))
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning leaves the process group up; tearing it down here lets gloo's threads stop before the
        # interpreter exits (otherwise a rank can abort with "terminate called without an active exception")
        torch.distributed.destroy_process_group()
    return export


class StudentExport(pl.Callback):
    """Writes the exported student at the end of fit, inside the training processes (so ``ddp_spawn`` workers
    export their trained state, not the parent's copy). Every rank gathers (a collective under FSDP); rank 0
    writes ``path``."""

    def __init__(self, path: Path, *, recipe: dict) -> None:
        self.path, self.recipe = Path(path), dict(recipe)

    def on_fit_end(self, trainer: pl.Trainer, module: DistillModule) -> None:
        state = module.gather_export_state()
        if not trainer.is_global_zero:
            return
        sources = {c.key: (module._teachers[c.key].weights_source if c.key in module._teachers else "cache")
                   for c in module.teacher_configs}
        module.export(self.path, state=state, extra_recipe={"teacher_weights": sources,
                                                            "world_size": int(trainer.world_size), **self.recipe})
        log.info("student written to %s", self.path)
        if any(s == "random" for s in sources.values()):
            log.warning("some teachers had RANDOM weights (%s): this student carries no knowledge", sources)


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def check_output_folder(cfg: DictConfig) -> None:
    """ConfigError when ``output_dir`` holds a finished student made by a configuration other than ``cfg``
    (keys of ``CONTINUATION_KEYS`` aside), unless ``overwrite=true``."""
    out, export = Path(cfg.output_dir), Path(cfg.export_path)
    record = out / RUN_RECORD
    if cfg.overwrite or not export.is_file() or not record.is_file():
        return
    try:
        old = _flat(json.loads(record.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{record} (the record of the finished {export.name}) is not valid JSON ({err}); "
                          "pass overwrite=true to replace the folder's student") from None
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and not k.startswith(CONTINUATION_KEYS))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{out} holds a finished {export.name} made by another configuration ({shown}"
                          f"{' ...' if len(changed) > 5 else ''}); choose another stages_root= or output_dir=, "
                          "or pass overwrite=true to replace it")


def write_run_record(cfg: DictConfig) -> Path:
    """``<output_dir>/config.json``: the resolved configuration of the run (written atomically)."""
    return atomic_write_text(Path(cfg.output_dir) / RUN_RECORD,
                             json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=1))


def validate_config(cfg: DictConfig) -> None:
    """Check the settings before any work (ConfigError naming the setting)."""
    if cfg.cache not in CACHE_MODES:
        raise ConfigError(f"cache={cfg.cache!r} unknown; use one of {', '.join(CACHE_MODES)}")
    cache_storage(cfg)
    seed = cfg.distill.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    check_output_folder(cfg)


def run(cfg: DictConfig) -> Path:
    """Build the teacher cache (``cache=build``) or train and export the student; returns what was written."""
    validate_config(cfg)
    if str(cfg.trainer.strategy) not in STRATEGIES:
        log.warning("trainer.strategy=%s is not one of %s; passing it to Lightning as is", cfg.trainer.strategy,
                    STRATEGIES)
    if cfg.cache == "build":  # the cache folder records its own settings (manifest.json)
        return build_cache(cfg)
    finished = Path(cfg.export_path).is_file()
    if finished and cfg.overwrite and cfg.resume:
        log.warning("overwrite=true: %s starts again (its checkpoints are not resumed)", cfg.output_dir)
        cfg = OmegaConf.merge(cfg, {"resume": False})
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0 and not finished:  # DDP / FSDP re-launch this script per rank: one writer
        write_run_record(cfg)  # says what the unfinished folder is being made by
    export = train(cfg)
    if rank_zero_only.rank == 0:
        write_run_record(cfg)  # now the record of the student just exported
    return export


@hydra.main(config_path=hydra_config_path(), config_name="run_distill", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_run_errors():
        run(cfg)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
