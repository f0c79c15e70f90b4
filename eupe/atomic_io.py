"""Atomic file writes: a reader (or a resumed run) sees either the old file or the complete new one, never half.

Every cache entry and results file of the package is written through here: the content goes to a temporary
file in the same folder (so the final rename stays on one file system), then ``os.replace`` swaps it in.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_sibling(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that contains its name, unique per process (two ranks may write
    the same entry at once). The original suffix stays last, because some writers (``np.savez``) append their
    own otherwise."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``, on error it
    is removed and ``path`` is left as it was. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
