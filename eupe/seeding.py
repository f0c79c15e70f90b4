"""One seed per run: every random stream of a run (model construction, data order, per-token noise) comes from it.

Work that fans out (tokens over Ray tasks, routes over parts) derives a seed per item from the run seed and the
item's key, so an item gets the same numbers whichever worker runs it and in whatever order.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

SEED_BITS = 63  # torch.manual_seed takes values below 2**64; numpy's SeedSequence any non-negative int


def derive_seed(seed: int, *keys: object) -> int:
    """A seed for the item named by ``keys`` within a run seeded with ``seed`` (stable across processes and
    Python versions: a SHA-256 of the text, not Python's salted ``hash``)."""
    text = "\x1f".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> (64 - SEED_BITS)


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU); returns ``seed``."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # the legacy global generator takes 32 bits
    torch.manual_seed(seed)
    return seed
