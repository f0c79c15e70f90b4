"""Distillation data: image sources, parametrised augmentations, datasets and a resumable batch sampler.

Sources (each a list of items that decode to an RGB uint8 image):
- ``ImageFolderSource``: every image file under a directory (recursive).
- ``TarShardSource``: WebDataset-style ``.tar`` shards read with the standard ``tarfile`` module; members are
  indexed once and then read by byte offset.
- ``ProceduralSource``: drawn images for smoke runs.
- any type a higher layer registers with :func:`register_source` (``navsim_agents.data.camera_source``: the
  camera images of NAVSIM scenes, ``navsim``, and of the embedded synthetic world, ``synthetic``).

Augmentations are drawn as parameters (crop box in relative coordinates, horizontal flip, and the colour
draws: jitter on/off, brightness / contrast / saturation / hue factors and their order, grayscale) from a
generator seeded by (seed, epoch, sample index), so the teacher-feature cache can store them, training
replays the exact augmented image, and a resumed run sees the same images. A corrupt image or shard is skipped, counted and named once in the log.
"""

from __future__ import annotations

import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import functional as TF

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GEOMETRY_DIM = 5  # (top, left, height, width) relative to the source image, flip flag
# + jitter applied, brightness, contrast, saturation, hue, the 4 jitter ops' order, grayscale flag
AUG_DIM = GEOMETRY_DIM + 10


# --- sources -----------------------------------------------------------------------------------------------
def decode_image(data: bytes, *, what: str) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 [H,W,3]; raises ValueError naming ``what`` when corrupt."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None or arr.ndim != 3 or min(arr.shape[:2]) < 2:
        raise ValueError(f"corrupt or unreadable image: {what}")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


class ImageFolderSource:
    """All image files under ``root`` (sorted, recursive)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"image folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def load(self, i: int) -> np.ndarray:
        path = self.files[i]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ValueError(f"unreadable image {path}: {err}") from err
        return decode_image(data, what=str(path))


class TarShardSource:
    """Images inside WebDataset-style tar shards (``*.tar`` files or a directory of them).

    Shards that cannot be indexed are skipped and listed in ``bad_shards``.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path]) -> None:
        if isinstance(shards, (str, Path)):
            p = Path(shards)
            paths = sorted(p.glob("*.tar")) if p.is_dir() else [p]
        else:
            paths = [Path(s) for s in shards]
        self.items: list[tuple[Path, int, int, str]] = []  # (shard, data offset, size, member name)
        self.bad_shards: list[str] = []
        for shard in paths:
            try:
                with tarfile.open(shard, "r:") as tf:
                    members = [m for m in tf.getmembers()
                               if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES]
            except (tarfile.TarError, OSError, EOFError) as err:
                log.warning("skipping corrupt shard %s: %s", shard, err)
                self.bad_shards.append(str(shard))
                continue
            self.items.extend((shard, m.offset_data, m.size, m.name) for m in members)
        if not self.items:
            raise ValueError(f"no readable images in tar shards {[str(p) for p in paths]} "
                             f"(corrupt: {self.bad_shards})")

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, i: int) -> str:
        shard, _, _, name = self.items[i]
        return f"{shard}:{name}"

    def load(self, i: int) -> np.ndarray:
        shard, offset, size, _ = self.items[i]
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise ValueError(f"unreadable shard member {self.describe(i)}: {err}") from err
        if len(data) != size:
            raise ValueError(f"truncated shard member {self.describe(i)}")
        return decode_image(data, what=self.describe(i))


class ProceduralSource:
    """Deterministic procedural images (smooth colour fields + rectangles) for smoke runs, tests and benchmarks.

    They carry no knowledge of the visual world: a run on them only exercises the machinery.
    """

    def __init__(self, num_images: int, *, size: int = 64, seed: int = 0) -> None:
        self.n, self.size, self.seed = int(num_images), int(size), int(seed)

    def __len__(self) -> int:
        return self.n

    def describe(self, i: int) -> str:
        return f"procedural[{self.seed}]#{i}"

    def load(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(i), 4241])
        s = self.size
        field_ = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(1, 4))):
            y0, x0 = rng.integers(0, s - 4, 2)
            h, w = rng.integers(4, s // 2 + 1, 2)
            field_[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        return np.clip(field_, 0, 255).astype(np.uint8)


class ConcatSource:
    """Several sources seen as one list."""

    def __init__(self, sources: Sequence[Any]) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _find(self, i: int) -> tuple[Any, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.sources[k], i - int(self.offsets[k])

    def describe(self, i: int) -> str:
        s, j = self._find(i)
        return s.describe(j)

    def load(self, i: int) -> np.ndarray:
        s, j = self._find(i)
        return s.load(j)


SourceFactory = Callable[..., Any]
"""``factory(**config fields) -> source`` (``__len__``, ``describe(i)``, ``load(i) -> RGB uint8``)."""
_SOURCE_FACTORIES: dict[str, SourceFactory] = {}


def register_source(kind: str, factory: SourceFactory) -> None:
    """Make ``{type: kind, ...}`` data-source configs build ``factory(**other fields)`` (a higher layer's data)."""
    _SOURCE_FACTORIES[kind] = factory


def source_types() -> list[str]:
    return ["folder", "tar", "procedural", *sorted(_SOURCE_FACTORIES)]


def build_source(specs: Sequence[dict[str, Any]]) -> ConcatSource:
    """Build sources from config dicts ``{type: folder|tar|procedural|<registered>, ...}``."""
    out = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("type")
        spec.pop("share", None)  # batch mixing, see source_shares / MixedPlan
        if kind == "folder":
            out.append(ImageFolderSource(spec["root"]))
        elif kind == "tar":
            out.append(TarShardSource(spec["shards"]))
        elif kind == "procedural":
            out.append(ProceduralSource(spec["num_images"], size=spec.get("size", 64), seed=spec.get("seed", 0)))
        elif kind in _SOURCE_FACTORIES:
            out.append(_SOURCE_FACTORIES[kind](**spec))
        else:
            raise ValueError(f"unknown data source type {kind!r}; known: {', '.join(source_types())} (a source of "
                             "another package registers when its module is imported: add that module to "
                             "run_distill's plugins)")
    return ConcatSource(out)


# --- augmentations ----------------------------------------------------------------------------------------
# facebookresearch/EUPE eupe/configs/ssl_default_config.yaml (crops.global_crops_scale, the only crop range in
# EUPE's released code base, inherited from DINOv3) and eupe/data/transforms.py (RandomResizedCrop with
# torchvision's default aspect ratios 3/4..4/3, hflip_prob 0.5). EUPE's distillation augmentations themselves
# are not released.
CROP_SCALE = (0.32, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
HFLIP_PROB = 0.5


# Colour: dinov3/data/augmentations.py (DataAugmentationDINO ``color_jittering``, the augmentation of DINOv3's
# distillation, which EUPE builds on): RandomApply([ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), RandomGrayscale(0.2).
# Factor ranges and the random op order as torchvision ColorJitter.get_params draws them.
COLOR_JITTER_PROB = 0.8
BRIGHTNESS = 0.4
CONTRAST = 0.4
SATURATION = 0.2
HUE = 0.1
GRAYSCALE_PROB = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    """Random-resized-crop + horizontal flip (the geometric augmentations of ViT distillation recipes), then
    optionally DINOv3's colour jitter and grayscale (off unless ``color_jitter`` / ``grayscale`` > 0)."""

    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO
    hflip: float = HFLIP_PROB
    enabled: bool = True
    color_jitter: float = 0.0  # probability of the jitter (DINOv3: COLOR_JITTER_PROB)
    brightness: float = BRIGHTNESS
    contrast: float = CONTRAST
    saturation: float = SATURATION
    hue: float = HUE
    grayscale: float = 0.0  # probability (DINOv3: GRAYSCALE_PROB)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AugmentConfig":
        """From a config mapping (lists become the tuples of the crop ranges); unknown keys are named."""
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"data.augment: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**{**raw, **{k: tuple(raw[k]) for k in ("crop_scale", "crop_ratio") if k in raw}})
        if not 0 <= cfg.hue <= 0.5 or min(cfg.brightness, cfg.contrast, cfg.saturation) < 0:
            raise ValueError(f"data.augment: hue must be in [0, 0.5] and brightness / contrast / saturation >= 0, "
                             f"got {cfg}")
        return cfg


NEUTRAL_COLOR = np.array([0, 1, 1, 1, 0, 0, 1, 2, 3, 0], dtype=np.float32)  # no jitter, identity order, no gray


def draw_aug_params(rng: np.random.Generator, cfg: AugmentConfig, hw: tuple[int, int]) -> np.ndarray:
    """Draw the augmentation of one sample of an image of size ``hw`` as float32 [AUG_DIM]: [top, left, height,
    width, flip] relative to the image, then the colour draws (see ``NEUTRAL_COLOR`` for their layout)."""
    h, w = hw
    if not cfg.enabled:
        return np.concatenate([np.array([0, 0, 1, 1, 0], dtype=np.float32), NEUTRAL_COLOR])
    area = h * w
    log_r = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):  # torchvision RandomResizedCrop's rejection sampling
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            break
    else:  # central crop fallback
        ch, cw = h, w
        top = left = 0
    flip = float(rng.uniform() < cfg.hflip)
    color = NEUTRAL_COLOR.copy()
    if cfg.color_jitter > 0 and rng.uniform() < cfg.color_jitter:  # v2.RandomApply([ColorJitter], p)
        color[0] = 1
        color[1] = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        color[2] = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        color[3] = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        color[4] = rng.uniform(-cfg.hue, cfg.hue)
        color[5:9] = rng.permutation(4)
    if cfg.grayscale > 0 and rng.uniform() < cfg.grayscale:
        color[9] = 1
    geometry = np.array([top / h, left / w, ch / h, cw / w, flip], dtype=np.float32)
    return np.concatenate([geometry, color])


def apply_color(x: torch.Tensor, color: np.ndarray) -> torch.Tensor:
    """Apply stored colour draws (``NEUTRAL_COLOR`` layout) to ``x [3,H,W]`` in [0,1] with torchvision's own
    functional ops (the ones ColorJitter and RandomGrayscale call), jitter ops in the stored order."""
    if color[0] > 0.5:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in color[5:9].astype(np.int64):
            factor = float(color[1 + op])
            x = ops[op](x, factor)
    if color[9] > 0.5:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return x


def apply_aug(image: np.ndarray, params: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Crop / flip an RGB uint8 [H,W,3] image per ``params``, resize to ``size``, then apply the colour draws
    (absent in 5-value parameters of older caches) -> float [3,size,size] in [0,1]."""
    p = np.asarray(params, dtype=np.float64)
    h, w = image.shape[:2]
    top, left = int(round(p[0] * h)), int(round(p[1] * w))
    ch, cw = max(1, int(round(p[2] * h))), max(1, int(round(p[3] * w)))
    crop = image[top:top + ch, left:left + cw]
    if p[4] > 0.5:
        crop = crop[:, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    x = x.clamp_(0.0, 1.0)
    if len(p) > GEOMETRY_DIM:
        x = apply_color(x, np.asarray(params, dtype=np.float32)[GEOMETRY_DIM:])
    return x


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one sample's augmentation, independent of worker and batch layout."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


# --- datasets ---------------------------------------------------------------------------------------------
class DistillImageDataset(Dataset):
    """Items are ``(index, epoch)`` pairs -> ``{"image" [3,S,S], "index", "aug" [5], "valid"}``.

    A corrupt image yields ``valid=False`` (and a black image); the collate function drops it and the module
    counts it in ``data/skipped``.
    """

    def __init__(self, source: Any, *, size: int, aug: AugmentConfig = AugmentConfig(), seed: int = 0) -> None:
        self.source, self.size, self.aug, self.seed = source, int(size), aug, int(seed)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def load_image(self, index: int) -> np.ndarray | None:
        try:
            return self.source.load(index)
        except ValueError as err:
            if index not in self._warned:
                self._warned.add(index)
                log.warning("skipping sample %d: %s", index, err)
            return None

    def get(self, index: int, aug: np.ndarray | None = None, epoch: int = 0) -> dict[str, Any]:
        """One sample with either the given augmentation parameters or freshly drawn ones."""
        image = self.load_image(index)
        if image is None:
            return {"image": torch.zeros(3, self.size, self.size), "index": index,
                    "aug": torch.zeros(AUG_DIM), "valid": False}
        if aug is None:
            aug = draw_aug_params(sample_rng(self.seed, epoch, index), self.aug, image.shape[:2])
        return {"image": apply_aug(image, aug, self.size), "index": index,
                "aug": torch.as_tensor(aug, dtype=torch.float32), "valid": True}

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = (item, 0) if isinstance(item, int) else item
        return self.get(int(index), epoch=int(epoch))


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack valid samples; ``skipped`` counts the dropped corrupt ones. Teacher features are stacked too."""
    good = [s for s in samples if s["valid"]]
    out: dict[str, Any] = {"skipped": len(samples) - len(good)}
    if not good:
        out.update(image=torch.zeros(0, 3, 1, 1), index=torch.zeros(0, dtype=torch.long), aug=torch.zeros(0, AUG_DIM))
        return out
    out["image"] = torch.stack([s["image"] for s in good])
    out["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
    out["aug"] = torch.stack([s["aug"] for s in good])
    if "teacher" in good[0]:
        out["teacher"] = {
            key: {"summary": torch.stack([s["teacher"][key]["summary"] for s in good]),
                  "patch": torch.stack([s["teacher"][key]["patch"] for s in good]),
                  "grid": good[0]["teacher"][key]["grid"],
                  "size": good[0]["teacher"][key]["size"]}
            for key in good[0]["teacher"]
        }
    return out


# --- resumable sampling -----------------------------------------------------------------------------------
class ShuffledPlan:
    """Batch at global position p: epoch ``p // per_epoch`` is a permutation seeded by (seed, epoch), split
    over ``world_size`` ranks; items are ``(index, epoch)``."""

    def __init__(self, num_samples: int, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(f"{num_samples} samples are fewer than one global batch ({batch_size} x {world_size})")
        self.n, self.bs, self.seed, self.rank, self.world = num_samples, batch_size, seed, rank, world_size
        self.per_epoch = num_samples // (batch_size * world_size)

    def batch(self, position: int) -> list[tuple[int, int]]:
        epoch, k = divmod(position, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch, 7919]).permutation(self.n)
        g = self.bs * self.world
        chunk = perm[k * g:(k + 1) * g][self.rank::self.world]
        return [(int(i), int(epoch)) for i in chunk]


def slot_counts(shares: Sequence[float], total: int) -> list[int]:
    """Split ``total`` batch slots by ``shares`` (normalised) with largest-remainder rounding; sums to total."""
    w = np.asarray(shares, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"source shares must be non-negative with a positive sum, got {list(shares)}")
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


class MixedPlan:
    """Batches mixing sources at fixed shares (e.g. EUPE's LVD-1689M + 10% ImageNet-1k, spec section 2).

    Every global batch of ``batch_size x world_size`` holds ``slot_counts(shares)`` samples of each source,
    whatever the sources' sizes; source s walks through its own permutations (seeded by (seed, s, epoch_s)),
    so its items are ``(global index, epoch_s)`` and a small source is repeated more often than a large one.
    The global batch is shuffled and split over ranks like ``ShuffledPlan``. ``per_epoch`` is nominal: the
    batches that visit as many samples as all sources hold together.
    """

    def __init__(self, source_sizes: Sequence[int], shares: Sequence[float], *, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(source_sizes) != len(shares):
            raise ValueError(f"{len(shares)} shares for {len(source_sizes)} sources")
        self.sizes = [int(n) for n in source_sizes]
        self.offsets = np.cumsum([0] + self.sizes)
        self.bs, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        g = batch_size * world_size
        self.counts = slot_counts(shares, g)
        empty = [i for i, (n, c) in enumerate(zip(self.sizes, self.counts, strict=True)) if c and not n]
        if empty:
            raise ValueError(f"data sources {empty} are empty but have a share of the batch")
        self.per_epoch = max(1, sum(self.sizes) // g)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 2 * len(self.sizes):  # keep the current and the next epoch of each source
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, source, epoch, 7919]).permutation(self.sizes[source])
        return self._perms[key]

    def batch(self, position: int) -> list[tuple[int, int]]:
        items = []
        for s, count in enumerate(self.counts):
            for k in range(position * count, (position + 1) * count):
                epoch, j = divmod(k, self.sizes[s])
                items.append((int(self.offsets[s] + self._perm(s, epoch)[j]), int(epoch)))
        order = np.random.default_rng([self.seed, int(position), 104729]).permutation(len(items))
        return [items[i] for i in order[self.rank::self.world]]


def source_shares(specs: Sequence[dict[str, Any]]) -> list[float] | None:
    """The ``share`` of each source config (its fraction of every batch), or None when no source sets one
    (then batches sample the concatenated sources uniformly). Shares are set on every source or on none."""
    shares = [spec.get("share") for spec in specs]
    if all(x is None for x in shares):
        return None
    if any(x is None for x in shares):
        raise ValueError(f"data sources: set 'share' on every source or on none (got {shares})")
    return [float(x) for x in shares]


def make_plan(dataset: Any, shares: Sequence[float] | None, *, batch_size: int, seed: int = 0, rank: int = 0,
              world_size: int = 1) -> ShuffledPlan | MixedPlan:
    """``ShuffledPlan`` over the whole dataset, or ``MixedPlan`` when the sources have shares."""
    if shares is None:
        return ShuffledPlan(len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
    sizes = [len(s) for s in dataset.source.sources]
    return MixedPlan(sizes, shares, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)


class ResumableBatchSampler(Sampler[list]):
    """Yields ``plan.batch(p)`` for global batch positions ``start .. total-1``.

    The loader of a resumed run is built with ``start`` = batches already done, so it continues with exactly
    the batches an uninterrupted run would see (Lightning restarts the epoch iterator on resume).
    """

    def __init__(self, plan: Any, *, total: int, start: int = 0) -> None:
        self.plan, self.total, self.start = plan, int(total), int(start)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list]:
        for position in range(self.start, self.total):
            yield self.plan.batch(position)


class DistillDataModule(pl.LightningDataModule):
    """Serves ``dataset`` in the batches of ``plan`` for ``total_batches`` positions; a resumed run starts at
    the position its restored ``global_step`` has reached (times gradient accumulation).

    ``plan`` is a plan object or a callable ``(*, rank, world_size) -> plan`` (e.g. a ``functools.partial`` of
    ``make_plan``; picklable for ``ddp_spawn``) evaluated once the trainer (and so the process's place in DDP /
    FSDP) is known.
    """

    def __init__(self, dataset: Dataset, plan: Any, *, total_batches: int, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__()
        self.dataset, self.plan, self.total = dataset, plan, int(total_batches)
        self.num_workers, self.pin_memory = int(num_workers), pin_memory

    def train_dataloader(self) -> DataLoader:
        start, rank, world = 0, 0, 1
        if self.trainer is not None:
            start = int(self.trainer.global_step) * int(self.trainer.accumulate_grad_batches)
            rank, world = int(self.trainer.global_rank), int(self.trainer.world_size)
        plan = self.plan(rank=rank, world_size=world) if callable(self.plan) else self.plan
        sampler = ResumableBatchSampler(plan, total=self.total, start=start)
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_samples, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)
