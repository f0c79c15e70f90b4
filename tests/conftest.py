"""Shared test fixtures: the conformance folder beside the repo, and a quiet single-threaded torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def conformance_root() -> Path | None:
    """``../shared/conformance`` beside the checkout, or ``$EUPE_DRIVE_CONFORMANCE``; None when absent."""
    env = os.environ.get("EUPE_DRIVE_CONFORMANCE")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "conformance"
    return root if root.is_dir() else None


@pytest.fixture
def conformance() -> Path:
    root = conformance_root()
    if root is None:
        pytest.skip("conformance data not found: expected ../shared/conformance beside the repo "
                    "or EUPE_DRIVE_CONFORMANCE=/path/to/conformance")
    return root
