"""Teacher-feature cache: run the teachers once, train later epochs / stages from their stored outputs.

Layout of a cache directory (safe formats only: JSON + safetensors, never pickles)::

    manifest.json             {"format": "eupe-teacher-cache", "version": 2, "complete": bool,
                               "teachers": {key: {"name", "summary_dim", "patch_dim", "weights_source"}},
                               "image_size", "seed", "augment": {...}, "storage": {"dtype", "pca"},
                               "num_samples", "batch_size",
                               "shards": [{"file", "rows", "grid": {key: [h, w]}, "size": {key: s}}]}
    shard-00000.safetensors   index int64 [n], epoch int64 [n], aug float32 [n, AUG_DIM] (crop, flip, colour),
                              per teacher key, by ``storage`` (``eupe.distill.compress``):
                              fp16:  "<key>/summary" float16 [n, Cs], "<key>/patch" float16 [n, h*w, Cp]
                              int8:  "<key>/summary" int8 [n, Cs] + "<key>/summary_scale" float32 [1, Cs],
                                     "<key>/patch" int8 [n, h*w, Cp] + "<key>/patch_scale" float32 [n, 1, Cp]
                              pca k: "<key>/patch_mean" float32 [Cp], "<key>/patch_basis" float32 [k, Cp],
                                     "<key>/patch" [n, h*w, k] coefficients (fp16, or int8 + "<key>/patch_scale")

Version 1 caches (fp16, 5 augmentation values: no colour) are still read.

Rows of one shard share each teacher's grid (a shard is closed when a teacher's resolution changes, as in
stage 3). The image of a row is rebuilt from (index, aug) by ``DistillImageDataset.get``, so the student
sees exactly the image the teacher saw, colour draws included. Training batches are drawn within one shard (``CachePlan``).
A build that stops part-way resumes after its last complete shard; a shard that cannot be read (truncated,
emptied) is named, and the next build rewrites it and the shards after it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from eupe.atomic_io import atomic_path, atomic_write_text
from eupe.distill.compress import (
    FeatureStorage,
    fit_pca,
    int8_decode,
    int8_encode,
    pca_decode,
    pca_encode,
)
from eupe.distill.data import AugmentConfig, DistillImageDataset

log = logging.getLogger(__name__)
CACHE_FORMAT = "eupe-teacher-cache"
CACHE_VERSION = 2
MANIFEST = "manifest.json"
FP16_STORAGE = FeatureStorage()


class TeacherCacheError(ValueError):
    """A cache directory is missing, corrupt, or does not match the run that reads it."""


def shard_problem(path: Path, rows: int) -> str | None:
    """Why the shard at ``path`` (``rows`` rows in the manifest) cannot be read; None when it can."""
    if not path.is_file():
        return "missing"
    try:
        with safe_open(str(path), framework="pt") as f:
            found = f.get_slice("index").get_shape()[0]
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        return f"{type(err).__name__}: {err}"
    return None if found == rows else f"{found} rows, the manifest says {rows}"


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


class CacheWriter:
    """Append teacher outputs row by row; shards of ``shard_rows`` rows are written as they fill.

    ``rows_done`` tells a resumed build how many rows (in build order) are already stored.
    """

    def __init__(self, root: str | Path, *, teachers: dict[str, dict[str, Any]], image_size: int, seed: int,
                 augment: AugmentConfig, num_samples: int, batch_size: int, shard_rows: int = 4096,
                 storage: FeatureStorage = FP16_STORAGE) -> None:
        storage.check_dims({k: int(t["patch_dim"]) for k, t in teachers.items()})
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_rows = int(shard_rows)
        self.storage = storage
        self.manifest = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION, "complete": False, "teachers": teachers,
            "image_size": int(image_size), "seed": int(seed), "augment": asdict(augment), "storage": asdict(storage),
            "num_samples": int(num_samples), "batch_size": int(batch_size), "shards": [], "positions_done": 0,
        }
        existing = self.root / MANIFEST
        if existing.is_file():
            old = json.loads(existing.read_text())
            same = {k: old.get(k) for k in ("teachers", "image_size", "seed", "augment", "storage", "num_samples")}
            if same != json.loads(json.dumps({k: self.manifest[k] for k in same})):  # tuples read back as lists
                raise TeacherCacheError(f"cache {self.root} was built with other settings ({same}); "
                                        "remove it or choose another cache.dir")
            self.manifest["shards"] = old["shards"]
            self.manifest["positions_done"] = int(old.get("positions_done", 0))
            self._drop_damaged_shards()
        self._buf: list[dict[str, Any]] = []
        self._grid: dict[str, list[int]] | None = None
        self._size: dict[str, int] | None = None
        self._position = self.positions_done

    def _drop_damaged_shards(self) -> None:
        """Forget the first unreadable shard and those after it, so the build resumes where it began."""
        shards = self.manifest["shards"]
        for i, shard in enumerate(shards):
            problem = shard_problem(self.root / shard["file"], int(shard["rows"]))
            if problem is None:
                continue
            # manifests written before shards recorded their end position resume from the start
            start = int(shards[i - 1].get("position_end", 0)) if i else 0
            log.warning("teacher cache shard %s cannot be read (%s); rebuilding from batch %d", self.root / shard["file"],
                        problem, start)
            self.manifest.update(shards=shards[:i] if start else [], positions_done=start, complete=False)
            return

    @property
    def rows_done(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def positions_done(self) -> int:
        """Batches (build positions) whose rows are all in written shards: a resumed build starts there."""
        return int(self.manifest["positions_done"])

    def add(self, *, index: torch.Tensor, epoch: torch.Tensor, aug: torch.Tensor,
            features: dict[str, Any], sizes: dict[str, int], position: int) -> None:
        """Add the batch of build position ``position``. ``features``: key -> object with ``summary [B,Cs]``,
        ``patch [B,N,Cp]``, ``grid``. Shards end at batch boundaries (once ``shard_rows`` rows are buffered)."""
        grid = {k: list(f.grid) for k, f in features.items()}
        if self._grid is not None and (grid != self._grid or sizes != self._size):
            self.flush()  # rows of one shard share each teacher's grid
        self._grid, self._size = grid, dict(sizes)
        for b in range(index.shape[0]):
            row = {"index": int(index[b]), "epoch": int(epoch[b]), "aug": aug[b].float().cpu()}
            for k, f in features.items():
                row.update(self._encode_row(k, f.summary[b].detach().cpu(), f.patch[b].detach().cpu()))
            self._buf.append(row)
        self._position = int(position) + 1
        if len(self._buf) >= self.shard_rows:
            self.flush()

    def _encode_row(self, key: str, summary: torch.Tensor, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One row's features as buffered: what can be encoded per row is encoded now (fp16, the int8 patch with
        its per-row scales); what shares per-shard statistics (int8 summary scales, PCA) stays float32."""
        st = self.storage
        out = {f"{key}/summary": summary.to(torch.float16) if st.dtype == "fp16" else summary.float()}
        if st.pca:
            out[f"{key}/patch"] = patch.float()
        elif st.dtype == "int8":
            out[f"{key}/patch"], out[f"{key}/patch_scale"] = int8_encode(patch, (0,))
        else:
            out[f"{key}/patch"] = patch.to(torch.float16)
        return out

    def _encode_shard(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-shard encodings of the stacked rows: int8 summaries, PCA of the patch tokens."""
        st = self.storage
        for key in list(self.manifest["teachers"]):
            if st.dtype == "int8":
                tensors[f"{key}/summary"], tensors[f"{key}/summary_scale"] = int8_encode(tensors[f"{key}/summary"], (0,))
            if st.pca:
                patch = tensors[f"{key}/patch"]
                pca = fit_pca(patch, st.pca)
                coefs = pca_encode(patch, pca)
                tensors[f"{key}/patch_mean"], tensors[f"{key}/patch_basis"] = pca.mean, pca.basis
                if st.dtype == "int8":
                    tensors[f"{key}/patch"], tensors[f"{key}/patch_scale"] = int8_encode(coefs, (1,))
                else:
                    tensors[f"{key}/patch"] = coefs.to(torch.float16)
        return {k: v.contiguous() for k, v in tensors.items()}

    def flush(self) -> None:
        """Write buffered rows as one shard and update the manifest."""
        if not self._buf:
            return
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        tensors = {
            "index": torch.tensor([r["index"] for r in self._buf], dtype=torch.int64),
            "epoch": torch.tensor([r["epoch"] for r in self._buf], dtype=torch.int64),
            "aug": torch.stack([r["aug"] for r in self._buf]),
        }
        for key in self._buf[0]:
            if "/" in key:
                tensors[key] = torch.stack([r[key] for r in self._buf])
        tensors = self._encode_shard(tensors)
        with atomic_path(self.root / name) as tmp:
            save_file(tensors, str(tmp))
        self.manifest["shards"].append({"file": name, "rows": len(self._buf), "grid": self._grid, "size": self._size,
                                        "position_end": self._position})
        self.manifest["positions_done"] = self._position
        _write_json(self.root / MANIFEST, self.manifest)
        self._buf = []

    def close(self) -> Path:
        """Flush and mark the cache complete; returns the manifest path."""
        self.flush()
        self.manifest["complete"] = True
        _write_json(self.root / MANIFEST, self.manifest)
        return self.root / MANIFEST


class TeacherCache:
    """Read side of a cache directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise TeacherCacheError(f"no teacher cache at {self.root} ({MANIFEST} missing); build it with "
                                    "eupe/run_distill.py cache=build")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TeacherCacheError(f"corrupt cache manifest {path}: {err}") from err
        if self.manifest.get("format") != CACHE_FORMAT or self.manifest.get("version", 0) > CACHE_VERSION:
            raise TeacherCacheError(f"{path} is not a {CACHE_FORMAT} v{CACHE_VERSION} manifest")
        if not self.manifest.get("complete"):
            raise TeacherCacheError(f"cache {self.root} is incomplete; finish it with eupe/run_distill.py cache=build")
        self.shards = self.manifest["shards"]
        for s in self.shards:
            problem = shard_problem(self.root / s["file"], int(s["rows"]))
            if problem:
                raise TeacherCacheError(f"cache shard {self.root / s['file']} cannot be read ({problem}); run "
                                        "eupe/run_distill.py cache=build again: it rebuilds that shard and the ones "
                                        "after it")
        # version 1 caches hold fp16 features only
        self.storage = FeatureStorage(**self.manifest.get("storage", {}))
        self._handles: dict[int, Any] = {}
        self._pca: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def teachers(self) -> dict[str, dict[str, Any]]:
        return self.manifest["teachers"]

    def teacher_dims(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v["summary_dim"]), int(v["patch_dim"])) for k, v in self.teachers.items()}

    def _open(self, shard: int) -> Any:
        if shard not in self._handles:  # one handle per shard and worker process
            try:
                self._handles[shard] = safe_open(str(self.root / self.shards[shard]["file"]), framework="pt")
            except Exception as err:
                raise TeacherCacheError(f"corrupt cache shard {self.root / self.shards[shard]['file']}: {err}") from err
        return self._handles[shard]

    def _features(self, f: Any, shard: int, key: str, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded ``(summary [Cs], patch [N, Cp])`` of one row (fp16 as stored, float32 otherwise)."""
        st = self.storage
        summary = f.get_slice(f"{key}/summary")[row]
        if st.dtype == "int8":
            summary = int8_decode(summary, f.get_slice(f"{key}/summary_scale")[0])
        patch = f.get_slice(f"{key}/patch")[row]
        if st.dtype == "int8":
            patch = int8_decode(patch, f.get_slice(f"{key}/patch_scale")[row])
        if st.pca:
            if (shard, key) not in self._pca:  # one basis per shard and teacher
                self._pca[(shard, key)] = (f.get_tensor(f"{key}/patch_mean"), f.get_tensor(f"{key}/patch_basis"))
            patch = pca_decode(patch, *self._pca[(shard, key)])
        return summary, patch

    def read_row(self, shard: int, row: int) -> dict[str, Any]:
        """Row ``row`` of shard ``shard``: index, epoch, aug and per-teacher features (decoded)."""
        f = self._open(shard)
        out: dict[str, Any] = {"index": int(f.get_slice("index")[row]), "epoch": int(f.get_slice("epoch")[row]),
                               "aug": f.get_slice("aug")[row], "teacher": {}}
        info = self.shards[shard]
        for key in self.teachers:
            summary, patch = self._features(f, shard, key, row)
            out["teacher"][key] = {"summary": summary, "patch": patch,
                                   "grid": tuple(info["grid"][key]), "size": int(info["size"][key])}
        return out

    def __getstate__(self) -> dict[str, Any]:  # handles are per process
        return {k: (v if k not in ("_handles", "_pca") else {}) for k, v in self.__dict__.items()}


class CachePlan:
    """Batches drawn within single shards: epoch e shuffles rows inside each shard (seeded by seed, e) and the
    order of the resulting batches; items are ``(shard, row)``; ranks take every world-th batch."""

    def __init__(self, shard_rows: list[int], *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.rows, self.bs, self.seed, self.rank, self.world, self.shuffle = shard_rows, batch_size, seed, rank, world_size, shuffle
        n_batches = sum(r // batch_size for r in shard_rows)
        self.per_epoch = n_batches // world_size
        if self.per_epoch == 0:
            raise TeacherCacheError(f"cache shards of {shard_rows} rows hold no full batch of {batch_size} x {world_size}")

    def batch(self, position: int) -> list[tuple[int, int]]:
        epoch, k = divmod(position, self.per_epoch)
        rng = np.random.default_rng([self.seed, epoch, 104729])
        batches = []
        for shard, n in enumerate(self.rows):
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            batches += [(shard, order[j * self.bs:(j + 1) * self.bs]) for j in range(n // self.bs)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        shard, rows = batches[k * self.world + self.rank]
        return [(shard, int(r)) for r in rows]


class CachedDistillDataset(Dataset):
    """Items ``(shard, row)`` -> the sample's image (rebuilt from index + aug) and its cached teacher features."""

    def __init__(self, cache: TeacherCache, images: DistillImageDataset) -> None:
        if len(images) != cache.manifest["num_samples"]:
            raise TeacherCacheError(f"cache {cache.root} was built on {cache.manifest['num_samples']} samples, "
                                    f"the data now has {len(images)}: rebuild the cache")
        if images.size != cache.manifest["image_size"]:
            raise TeacherCacheError(f"cache {cache.root} was built at image size {cache.manifest['image_size']}, "
                                    f"the run uses {images.size}")
        self.cache, self.images = cache, images

    def __len__(self) -> int:
        return sum(s["rows"] for s in self.cache.shards)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        shard, row = item
        rec = self.cache.read_row(int(shard), int(row))
        sample = self.images.get(rec["index"], aug=rec["aug"].numpy())
        sample["teacher"] = rec["teacher"]
        return sample
