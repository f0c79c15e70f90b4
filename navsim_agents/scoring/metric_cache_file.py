"""``MetricCache``: the agent-independent scoring inputs of one token, and its versioned ``.npz`` file.

One `.npz` per token (loaded with `allow_pickle=False`): JSON metadata and one uncompressed member holding every
array's bytes, laid out as the metadata says. The builder
(``navsim_agents.scoring.metric_cache``) fills it from OpenScene logs and the map; scoring
(``navsim_agents.scoring.pdm_score``) reads it. Both import this module.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from eupe.atomic_io import atomic_path
from navsim_agents.scoring.observation import DrivableMap, FlatOccupancy, Observation, TrackInfo, ring_bounds
from navsim_agents.scoring.scorer import CenterlinePath

# 3: corrected route (navsim route_roadblock_correction); 4: devkit jerk-penalty matrix; 5: current tracks and the
# unfiltered log replay of non-vehicles for reactive traffic, map location of the cache; 6: ego heading from
# pyquaternion's yaw (the x*y sign of formats 4-5 was flipped); 7: every array in one uncompressed member (one read
# instead of a zip member, a header parse and a decompression per array)
CACHE_FORMAT_VERSION = 7
# the members of the .npz: JSON metadata (with the layout of the arrays) and the arrays' bytes, 8-byte aligned
META_MEMBER, DATA_MEMBER, LAYOUT_KEY = "meta_json", "data", "array_layout"
_ALIGN = 8
# what a truncated, emptied or overwritten .npz raises when read
CACHE_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
# the object type navsim's reactive IDM policy simulates (TrackedObjectType.VEHICLE); the cache's "replay"
# observation holds the others, which stay log replay
REACTIVE_TYPE_NAME = "vehicle"


class MetricCacheError(ValueError):
    """A metric cache file that exists but cannot be used (truncated, corrupt, another format)."""


def wkb_pack(geoms) -> tuple[np.ndarray, np.ndarray]:
    """Geometries as one WKB byte array + offsets (npz-safe, no pickles)."""
    blobs = [shapely.to_wkb(g) for g in geoms]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def wkb_unpack(data: np.ndarray, offsets: np.ndarray) -> list:
    """Inverse of :func:`wkb_pack`."""
    raw = data.tobytes()
    blobs = np.array([raw[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)], dtype=object)
    return list(shapely.from_wkb(blobs)) if len(blobs) else []


def _byte_member(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """A uint8 vector member of an .npz read straight from the zip (np.load parses each header with
    ``ast.literal_eval``, several times the cost of the read); writable, as np.load's arrays are."""
    raw = archive.read(f"{name}.npy")
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"member {name} is not a .npy array")
    start = 10 + int.from_bytes(raw[8:10], "little") if raw[6] == 1 else 12 + int.from_bytes(raw[8:12], "little")
    header = raw[:start]
    if b"'descr': '|u1'" not in header or b"'fortran_order': False" not in header:
        raise ValueError(f"member {name} is not a uint8 vector")
    return np.frombuffer(bytearray(memoryview(raw)[start:]), dtype=np.uint8)


def _read_meta(archive: zipfile.ZipFile) -> dict:
    """The JSON metadata member of an open cache file (every format keeps it under the same name)."""
    return json.loads(_byte_member(archive, META_MEMBER).tobytes().decode())


@dataclass
class MetricCache:
    """Agent-independent scoring inputs of one token (arrays; see `save` / `load`)."""

    meta: dict
    arrays: dict = field(default_factory=dict)

    # --- reconstruction helpers ----------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return self.meta["token"]

    @property
    def ego_state(self) -> np.ndarray:
        return self.arrays["ego_state"]

    def centerline(self) -> CenterlinePath:
        return CenterlinePath(self.arrays["centerline"])

    def drivable(self) -> DrivableMap:
        polys = wkb_unpack(self.arrays["drivable_wkb"], self.arrays["drivable_offsets"])
        return DrivableMap(self.meta["drivable_tokens"], self.meta["drivable_kinds"], polys)

    def red_light_steps(self, version: str) -> list[tuple[list[str], list]]:
        """(tokens, polygons) of the red on-route lane connectors at each 0.1 s step (the devkit's
        `_occupancy_maps_tl`)."""
        red_tokens = self.meta.get(f"red_{version}_tokens", [])
        n_steps = int(self.meta[f"obs_{version}_steps"])
        if not red_tokens:
            return [([], []) for _ in range(n_steps)]
        polys = wkb_unpack(self.arrays[f"red_{version}_wkb"], self.arrays[f"red_{version}_offsets"])
        mask = self.arrays[f"red_{version}_mask"]
        return [([t for j, t in enumerate(red_tokens) if mask[k, j]], [p for j, p in enumerate(polys) if mask[k, j]])
                for k in range(n_steps)]

    def observation(self, version: str) -> Observation:
        """The observation of `version` ("v1", "v2", "replay"): per 0.1 s step the tracks in their first-sight
        order, then the step's red lights; polygons are built only where the scorer needs them."""
        a = self.arrays
        tokens = self.meta[f"obs_{version}_tokens"]
        step, tok, rings = a[f"obs_{version}_step"], a[f"obs_{version}_token"], a[f"obs_{version}_rings"]
        n_steps = int(self.meta[f"obs_{version}_steps"])
        red_tokens = self.meta.get(f"red_{version}_tokens", [])
        red_steps, red_ids = (np.nonzero(a[f"red_{version}_mask"]) if red_tokens
                              else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        # rows by step; within a step the tracks (stable) before the red lights
        map_index = np.concatenate([step.astype(np.int64), red_steps])
        kind = np.concatenate([np.zeros(len(step), np.int64), np.ones(len(red_steps), np.int64)])
        order = np.lexsort((np.arange(len(map_index)), kind, map_index))
        all_tokens = [tokens[i] for i in tok] + [red_tokens[j] for j in red_ids]
        polygons = np.full(len(map_index), None, dtype=object)
        bounds = np.zeros((len(map_index), 4))
        bounds[:len(step)] = ring_bounds(rings)
        all_rings = np.zeros((len(map_index), 4, 2))
        all_rings[:len(step)] = rings
        if len(red_ids):
            red_polys = np.array(wkb_unpack(a[f"red_{version}_wkb"], a[f"red_{version}_offsets"]) + [None],
                                 dtype=object)[:-1]
            polygons[len(step):] = red_polys[red_ids]
            bounds[len(step):] = shapely.bounds(red_polys)[red_ids]
        flat = FlatOccupancy(map_index[order], [all_tokens[i] for i in order], bounds[order], n_steps,
                             polygons=polygons[order], rings=all_rings[order])
        info = a[f"obs_{version}_info"]
        unique = {t: TrackInfo(bool(info[i, 0]), float(info[i, 1]), float(info[i, 2])) for i, t in enumerate(tokens)}
        return Observation(None, unique, [], stride=1, flat=flat)

    # --- io ------------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically (a per-process temporary file, then a rename: ranks may write the same token)."""
        layout, chunks, offset = [], [], 0
        for name, value in self.arrays.items():
            array = np.asarray(value)  # tobytes() writes C order; 0-d arrays stay 0-d
            raw = array.tobytes()
            layout.append([name, array.dtype.str, list(array.shape), offset])
            pad = -len(raw) % _ALIGN
            chunks.append(raw + b"\0" * pad)
            offset += len(raw) + pad
        meta = dict(self.meta, format_version=CACHE_FORMAT_VERSION, **{LAYOUT_KEY: layout})
        with atomic_path(path) as tmp:
            np.savez(tmp, **{META_MEMBER: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                             DATA_MEMBER: np.frombuffer(b"".join(chunks), dtype=np.uint8)})

    @staticmethod
    def stored_format_version(path: Path) -> int | None:
        """Format version written in the cache file at `path` (None when it is absent or unreadable)."""
        try:
            with zipfile.ZipFile(path) as archive:
                return _read_meta(archive).get("format_version")
        except CACHE_READ_ERRORS:
            return None

    @classmethod
    def load(cls, path: Path) -> "MetricCache":
        """Read a cache file; ``FileNotFoundError`` when absent, ``MetricCacheError`` (naming the file) when it
        cannot be read or was written by another format."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metric cache file {path} not found; run navsim_agents/run_metric_caching.py")
        try:
            with zipfile.ZipFile(path) as archive:
                meta = _read_meta(archive)
                if meta.get("format_version") != CACHE_FORMAT_VERSION:
                    raise MetricCacheError(f"metric cache {path} has format {meta.get('format_version')}, expected "
                                           f"{CACHE_FORMAT_VERSION}; rebuild it with run_metric_caching.py")
                blob = _byte_member(archive, DATA_MEMBER)
            arrays = {}
            for name, dtype, shape, offset in meta.pop(LAYOUT_KEY):
                size = math.prod(shape) * np.dtype(dtype).itemsize  # ints: np.prod's call costs more
                arrays[name] = blob[offset:offset + size].view(dtype).reshape(tuple(shape))
        except MetricCacheError:
            raise
        except CACHE_READ_ERRORS as err:
            raise MetricCacheError(f"metric cache {path} cannot be read ({type(err).__name__}: {err}); rebuild it "
                                   "with run_metric_caching.py force=true") from err
        return cls(meta, arrays)
