"""Loaded data that a batch job keeps for its whole run, kept out of the cyclic garbage collector's passes."""

from __future__ import annotations

import gc

# Collector thresholds for a job whose scenes keep many geometries alive (two-stage scoring's traffic memos): the
# default young-generation passes (every 700 allocations) mostly traverse those survivors, about 10% of its CPU.
# Cycles are rare and small there. Jobs without such survivors keep the defaults (their smaller young generation
# measured no slower).
JOB_GC_THRESHOLDS = (20_000, 20, 50)
_saved_thresholds: list[tuple[int, int, int]] = []


def freeze_long_lived(space_collections: bool = False) -> None:
    """Collect, then move every object alive now into the collector's permanent generation, so the job's later
    full collections stop traversing the hundreds of thousands of map and scene-log objects (about 15% of metric
    caching's CPU on navsim_dev); `space_collections`: also space out the collector's passes (`JOB_GC_THRESHOLDS`).
    Frozen objects are still freed by reference counting; only cycles among them are kept."""
    gc.collect()
    gc.freeze()
    if space_collections and not _saved_thresholds:
        _saved_thresholds.append(gc.get_threshold())
        gc.set_threshold(*JOB_GC_THRESHOLDS)


def release_long_lived() -> None:
    """Undo :func:`freeze_long_lived` at the end of a job run in a longer process (tests, notebooks)."""
    gc.unfreeze()
    if _saved_thresholds:
        gc.set_threshold(*_saved_thresholds.pop())
