"""LightningModule of the distillation: student + adaptor heads + teacher-feature normalisers, step logic only.

Per training step: teacher features come from the batch (cache) or from the online teachers; they are
normalised (statistics estimated over the first iterations, then frozen); the student runs at its resolution
(stage 3: a scale drawn per step from the pyramid, independently of the teachers' scale); per-teacher heads
map student features to each teacher; the loss is the EUPE summary + patch loss (``losses.distill_loss``),
every term logged. Per-step random draws come from (seed, global_step), so a resumed run repeats them.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from eupe.distill.export import save_student
from eupe.distill.heads import build_heads, head_key
from eupe.distill.losses import (
    PATCH_COS_WEIGHT,
    PATCH_SMOOTH_L1_WEIGHT,
    TeacherLossWeights,
    distill_loss,
    tokens_to_grid,
)
from eupe.distill.normalizer import EUPE_NORMALIZER_WARMUP_ITERS, FeatureNormalizer
from eupe.models import build_student_model
from eupe.student_checkpoint import load_student_tensors
from eupe.teachers import Teacher, TeacherOutput, build_teacher, encode_timm

log = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    """One teacher of a run: ``key`` names it in logs, heads and the cache (default: ``name``)."""

    name: str
    key: str | None = None
    weights: str | None = None
    img_size: int | None = None
    device: str | None = None
    precision: str = "auto"  # teachers.TEACHER_PRECISIONS
    summary_weight: float = 1.0
    patch_weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = self.key or self.name


def build_teachers(configs: list[TeacherConfig]) -> dict[str, Teacher]:
    """Build every teacher of ``configs`` (frozen, on its own device).

    ``device: auto`` spreads teachers round-robin over the visible GPUs of this process (sharding a large
    teacher set in one process); ``null`` keeps a teacher with the student.
    """
    keys = [c.key for c in configs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"teacher keys must be unique, got {keys}; set 'key' to tell teachers apart")
    n_gpu = torch.cuda.device_count()
    out = {}
    for i, c in enumerate(configs):
        device = c.device
        if device == "auto":
            device = f"cuda:{i % n_gpu}" if n_gpu else None
        out[c.key] = build_teacher(c.name, weights=c.weights, img_size=c.img_size, device=device,
                                   precision=c.precision, **c.kwargs)
    return out


class DistillModule(pl.LightningModule):
    """Distil ``teachers`` into the student ``student_name`` (timm name or eupe short name).

    Args (keyword-only):
        student_name, student_kwargs: the student architecture (recorded in the exported checkpoint).
        teachers: list of teacher config dicts (``TeacherConfig`` fields).
        teacher_dims: key -> (summary_dim, patch_dim); given when training from a cache (teachers are then
            built only if a batch arrives without features).
        head_hidden: hidden width of the adaptor heads (1536 stage 1, 3072 stages 2-3).
        normalizer: ``standardize`` | ``phi_s`` | ``none``; normalizer_warmup: iterations before freezing.
        student_size: student resolution; student_pyramid / teacher_pyramid: stage-3 scale choices (drawn
            independently per step; empty = fixed student_size / teachers' native sizes).
        lr, weight_decay, betas, warmup_steps, max_steps, min_lr_ratio: AdamW with warmup + cosine decay.
        ema_decay: EMA of the student (0 = off); grad_checkpointing: timm activation checkpointing.
        init_from: a student checkpoint (export format) to initialise the student (and matching heads and
            normaliser statistics) from, e.g. stage 3 from stage 2.
        seed: per-step draws.
    """

    def __init__(self, *, student_name: str, student_kwargs: dict[str, Any] | None = None,
                 teachers: list[dict[str, Any]], teacher_dims: dict[str, list[int]] | None = None,
                 head_hidden: int = 3072, normalizer: str = "standardize",
                 normalizer_warmup: int = EUPE_NORMALIZER_WARMUP_ITERS, student_size: int = 256,
                 student_pyramid: list[int] | None = None, teacher_pyramid: list[int] | None = None,
                 lr: float = 2e-5, weight_decay: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_steps: int = 0, max_steps: int = 1000, min_lr_ratio: float = 0.0,
                 patch_cos_weight: float = PATCH_COS_WEIGHT, patch_smooth_l1_weight: float = PATCH_SMOOTH_L1_WEIGHT,
                 ema_decay: float = 0.0, grad_checkpointing: bool = False, init_from: str | None = None,
                 student_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN, student_std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
                 recipe: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.teacher_configs = [TeacherConfig(**dict(t)) for t in teachers]
        self.student_kwargs = dict(student_kwargs or {})
        self.student = build_student_model(student_name, self.student_kwargs)
        if grad_checkpointing and hasattr(self.student, "set_grad_checkpointing"):
            self.student.set_grad_checkpointing(True)
        self._teachers: dict[str, Teacher] = {}  # plain dict: teachers stay out of state_dict / checkpoints
        if teacher_dims is None:
            self._teachers = build_teachers(self.teacher_configs)
            teacher_dims = {k: (t.summary_dim, t.patch_dim) for k, t in self._teachers.items()}
        self.teacher_dims = {k: (int(v[0]), int(v[1])) for k, v in teacher_dims.items()}
        missing = [c.key for c in self.teacher_configs if c.key not in self.teacher_dims]
        if missing:
            raise ValueError(f"no feature dims for teachers {missing} (cache built with other teachers?)")
        student_dim = int(getattr(self.student, "num_features", 0) or self.student.embed_dim)
        self.heads = build_heads(student_dim=student_dim, teacher_dims=self.teacher_dims, hidden_dim=head_hidden)
        self.normalizers = nn.ModuleDict({
            f"{head_key(k)}__{part}": FeatureNormalizer(dim, mode=normalizer, warmup_iters=normalizer_warmup)
            for k, (ds, dp) in self.teacher_dims.items() for part, dim in (("summary", ds), ("patch", dp))
        })
        self.loss_weights = {c.key: TeacherLossWeights(c.summary_weight, c.patch_weight) for c in self.teacher_configs}
        self.register_buffer("student_mean", torch.tensor(student_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std).view(1, 3, 1, 1), persistent=False)
        self.student_ema = None
        if ema_decay > 0:
            self.student_ema = copy.deepcopy(self.student).requires_grad_(False).eval()
        if init_from:
            self._init_from(init_from)

    # --- set-up ------------------------------------------------------------------------------------------
    def _init_from(self, path: str) -> None:
        groups, meta = load_student_tensors(path)
        if meta["model_name"] != self.hparams.student_name:
            raise ValueError(f"init_from {path} holds a {meta['model_name']} student, this run trains "
                             f"{self.hparams.student_name}")
        self.student.load_state_dict(groups["student"], strict=True)
        if self.student_ema is not None:
            self.student_ema.load_state_dict(groups["student"], strict=True)
        own = self.heads.state_dict()
        heads = {k: v for k, v in groups.get("heads", {}).items() if k in own and own[k].shape == v.shape}
        self.heads.load_state_dict(heads, strict=False)
        for name, norm in self.normalizers.items():
            key, part = name.split("__")
            stats = {s: groups["normalizer"].get(f"{key}.{part}.{s}") for s in ("mean", "std", "transform")}
            if stats["mean"] is not None and stats["mean"].shape == norm.mean.shape:
                norm.mean.copy_(stats["mean"])
                norm.std.copy_(stats["std"])
                if stats["transform"] is not None and norm.transform.shape == stats["transform"].shape:
                    norm.transform.copy_(stats["transform"])
                norm.frozen.fill_(True)
        log.info("initialised student from %s (%d head tensors, normaliser stats reused where they fit)",
                 path, len(heads))

    def configure_model(self) -> None:
        """Under FSDP (``ModelParallelStrategy``, which provides ``device_mesh``): shard each student block, the
        student, its EMA copy and each teacher's heads with FSDP2 ``fully_shard`` over the data-parallel mesh.
        Teachers stay whole on every rank (each rank runs them on its own batch). No-op otherwise."""
        mesh = self._device_mesh
        if mesh is None or getattr(self, "_fsdp_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        for model in (self.student, self.student_ema):
            if model is None:
                continue
            blocks = getattr(model, "blocks", None) or getattr(model, "stages", None) or []
            for block in blocks:
                fully_shard(block, mesh=dp_mesh)
            fully_shard(model, mesh=dp_mesh)
            # encode_timm calls these instead of forward(): they must gather the root's own parameters too
            for method in ("forward_features", "forward_head"):
                register_fsdp_forward_method(model, method)
        for head in self.heads.values():
            fully_shard(head, mesh=dp_mesh)
        self._fsdp_sharded = True

    @property
    def teachers(self) -> dict[str, Teacher]:
        """Online teachers (built on first use when training from a cache)."""
        if not self._teachers:
            self._teachers = build_teachers(self.teacher_configs)
        no_gpu = torch.cuda.device_count() == 0
        for c in self.teacher_configs:  # teachers without a device of their own follow the student
            follows = c.device is None or (c.device == "auto" and no_gpu)
            if follows and self._teachers[c.key].device != self.device:
                self._teachers[c.key].to(self.device)
        return self._teachers

    def draw_sizes(self, step: int) -> tuple[int, dict[str, int | None]]:
        """Student size and per-teacher sizes for ``step`` (stage 3: independent draws from the pyramids)."""
        rng = np.random.default_rng([int(self.hparams.seed), int(step), 31])
        s_pyr, t_pyr = self.hparams.student_pyramid, self.hparams.teacher_pyramid
        student = int(rng.choice(s_pyr)) if s_pyr else int(self.hparams.student_size)
        teacher = int(rng.choice(t_pyr)) if t_pyr else None
        return student, {c.key: teacher or c.img_size for c in self.teacher_configs}

    # --- features ----------------------------------------------------------------------------------------
    def run_teachers(self, images: torch.Tensor, sizes: dict[str, int | None]) -> dict[str, TeacherOutput]:
        """Online teacher features for images in [0,1], on the student's device."""
        out = {}
        for key, teacher in self.teachers.items():
            o = teacher(images, size=sizes.get(key))
            out[key] = TeacherOutput(o.summary.to(self.device), o.patch.to(self.device), o.grid)
        return out

    def student_features(self, images: torch.Tensor, size: int, *, model: nn.Module | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Student predictions per teacher: summaries [B,C] and patch maps [B,C,h,w] (heads applied)."""
        x = images
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.student_mean) / self.student_std
        enc = encode_timm(model or self.student, x)
        sums, patches = {}, {}
        for key in self.teacher_dims:
            s, p = self.heads[head_key(key)](enc.summary, enc.patch)
            sums[key], patches[key] = s, tokens_to_grid(p, enc.grid)
        return sums, patches

    def normalized_targets(self, feats: dict[str, Any], *, observe: bool, end_iteration: bool = True
                           ) -> tuple[dict, dict]:
        """Normalised teacher summaries [B,C] and patch maps [B,C,h,w]; ``observe`` updates the statistics
        (``end_iteration``: this batch ends an optimizer iteration, see ``FeatureNormalizer.observe``)."""
        sums, patches = {}, {}
        for key in self.teacher_dims:
            f = feats[key]
            ns = self.normalizers[f"{head_key(key)}__summary"]
            npch = self.normalizers[f"{head_key(key)}__patch"]
            if observe:
                ns.observe(f.summary, end_iteration=end_iteration)
                npch.observe(f.patch, end_iteration=end_iteration)
            sums[key] = ns(f.summary)
            patches[key] = tokens_to_grid(npch(f.patch), f.grid)
        return sums, patches

    @staticmethod
    def batch_features(batch: dict[str, Any]) -> dict[str, TeacherOutput] | None:
        """Cached teacher features carried by a batch (fp16 on disk -> fp32), or None."""
        if "teacher" not in batch:
            return None
        return {k: TeacherOutput(v["summary"].float(), v["patch"].float(), tuple(v["grid"]))
                for k, v in batch["teacher"].items()}

    def compute_loss(self, batch: dict[str, Any], step: int, *, observe: bool, end_iteration: bool = True
                     ) -> tuple[torch.Tensor, dict]:
        """Loss and its terms for one batch at ``step`` (sizes drawn from (seed, step))."""
        student_size, teacher_sizes = self.draw_sizes(step)
        feats = self.batch_features(batch)
        if feats is None:
            feats = self.run_teachers(batch["image"], teacher_sizes)
        t_sum, t_patch = self.normalized_targets(feats, observe=observe, end_iteration=end_iteration)
        s_sum, s_patch = self.student_features(batch["image"], student_size)
        total, terms = distill_loss(s_sum, s_patch, t_sum, t_patch, self.loss_weights,
                                    cos_weight=self.hparams.patch_cos_weight,
                                    smooth_l1_weight=self.hparams.patch_smooth_l1_weight)
        terms["student_size"] = torch.tensor(float(student_size))
        return total, terms

    # --- Lightning hooks ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        skipped = int(batch.get("skipped", 0))
        if batch["image"].shape[0] == 0:
            self.log("data/skipped", float(skipped), reduce_fx="sum")
            return None
        accumulate = int(self.trainer.accumulate_grad_batches) if self._trainer is not None else 1
        total, terms = self.compute_loss(batch, self.global_step, observe=True,
                                         end_iteration=(batch_idx + 1) % accumulate == 0)
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite distillation loss at step {self.global_step}: "
                                     f"{ {k: float(v) for k, v in terms.items()} }")
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        self.log("data/skipped", float(skipped), reduce_fx="sum", batch_size=bs)
        return total

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update: once per optimizer step (not per accumulated micro-batch),
        and before the step's ``on_train_batch_end`` callbacks, so a checkpoint saved there holds the EMA of
        the same step as the student (a resumed run then continues the EMA exactly)."""
        super().optimizer_step(*args, **kwargs)
        if self.student_ema is not None:
            decay = float(self.hparams.ema_decay)
            with torch.no_grad():
                ema = list(self.student_ema.parameters())
                torch._foreach_lerp_(ema, [p.detach() for p in self.student.parameters()], 1.0 - decay)

    def configure_optimizers(self) -> Any:
        params = [p for p in list(self.student.parameters()) + list(self.heads.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms, biases, tokens: no weight decay
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        warm, total, floor = int(self.hparams.warmup_steps), max(1, int(self.hparams.max_steps)), self.hparams.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation and export ---------------------------------------------------------------------------
    @torch.no_grad()
    def feature_similarity(self, images: torch.Tensor, *, size: int | None = None) -> dict[str, float]:
        """Mean cosine similarity between student predictions and normalised teacher features on ``images``:
        ``<key>/summary`` (per image) and ``<key>/patch`` (per token, on the larger grid)."""
        from eupe.distill.losses import match_grids

        size = size or int(self.hparams.student_size)
        feats = self.run_teachers(images, {c.key: c.img_size for c in self.teacher_configs})
        t_sum, t_patch = self.normalized_targets(feats, observe=False)
        s_sum, s_patch = self.student_features(images, size, model=self.export_model())
        out = {}
        for key in t_sum:
            out[f"{key}/summary"] = float(F.cosine_similarity(s_sum[key], t_sum[key], dim=-1).mean())
            s, t = match_grids(s_patch[key], t_patch[key])
            out[f"{key}/patch"] = float(F.cosine_similarity(s, t, dim=1).mean())
        return out

    def export_model(self) -> nn.Module:
        """The student to export: its EMA when enabled."""
        return self.student_ema if self.student_ema is not None else self.student

    def normalizer_stats(self) -> dict[str, torch.Tensor]:
        """Flat ``<key>.<summary|patch>.<mean|std|transform>`` -> tensor."""
        out = {}
        for name, norm in self.normalizers.items():
            key, part = name.split("__")
            out.update({f"{key}.{part}.{s}": v for s, v in norm.stats().items()})
        return out

    def gather_export_state(self, *, include_heads: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Full (unsharded, CPU) state dicts of the student to export (EMA if on) and optionally the heads.

        Under FSDP this is a collective: call it on every rank; only rank 0 receives the tensors."""
        from torch.distributed.tensor import DTensor

        modules = {"student": self.export_model()}
        if include_heads:
            modules["heads"] = self.heads
        out = {}
        for name, module in modules.items():
            if any(isinstance(p, DTensor) for p in module.parameters()):
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

                out[name] = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
            else:
                out[name] = module.state_dict()
        return out

    def export(self, path: str | Path, *, include_heads: bool = False, extra_recipe: dict | None = None,
               state: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Write the student (EMA if on) as a self-describing checkpoint (``eupe.distill.export``).

        ``state``: the output of ``gather_export_state`` (required under FSDP, where it is a collective)."""
        state = state or self.gather_export_state(include_heads=include_heads)
        model = self.export_model()
        ps = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        recipe = dict(self.hparams.recipe or {})
        recipe.update(teachers=[vars(c) for c in self.teacher_configs], head_hidden=self.hparams.head_hidden,
                      normalizer=self.hparams.normalizer, steps=int(self.global_step), **(extra_recipe or {}))
        return save_student(
            path, self.hparams.student_name, self.student_kwargs, state["student"], self.normalizer_stats(),
            recipe, mean=tuple(self.student_mean.flatten().tolist()), std=tuple(self.student_std.flatten().tolist()),
            img_size=int(self.hparams.student_size), patch_size=int(ps[0] if isinstance(ps, (tuple, list)) else ps) if ps else None,
            heads_state_dict=state.get("heads") if include_heads else None)
