"""Where the Hydra config tree lives: ``configs/`` beside the sources in a checkout, the importable package
``eupe_drive_configs`` in an installed distribution (pyproject.toml maps the one onto the other).

Every entry point passes :func:`hydra_config_path` to ``@hydra.main``, so ``python -m navsim_agents.run_pdm_score``
and the console scripts find their configs from any directory, from a checkout and from a built wheel alike.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

CONFIG_PACKAGE = "eupe_drive_configs"
# A checkout holds the tree at <repo>/configs; the wheel has no such folder beside the packages.
CHECKOUT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_MARKER = "run_pdm_score.yaml"  # one primary config, so an unrelated ``configs`` folder is not taken for ours


def in_checkout() -> bool:
    """True when the sources run from a checkout (plain or ``pip install -e``) that has its ``configs/``."""
    return (CHECKOUT_CONFIG_DIR / _MARKER).is_file()


def config_dir() -> Path:
    """The folder holding ``run_*.yaml`` and the config groups (``planner/``, ``backbone/``, ...)."""
    if in_checkout():
        return CHECKOUT_CONFIG_DIR
    spec = importlib.util.find_spec(CONFIG_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Hydra config tree was not found: neither {CHECKOUT_CONFIG_DIR} (a checkout) nor the package "
            f"{CONFIG_PACKAGE!r} (an installed eupe-drive) exists; reinstall with `pip install eupe-drive` "
            "or `pip install -e .` from the repository")
    return Path(next(iter(spec.submodule_search_locations)))


def hydra_config_path() -> str:
    """``config_path`` for ``@hydra.main``: the checkout's folder, else Hydra's ``pkg://`` search path."""
    return str(CHECKOUT_CONFIG_DIR) if in_checkout() else f"pkg://{CONFIG_PACKAGE}"


def config_file(group: str, name: str) -> Path:
    """``<config tree>/<group>/<name>.yaml``; FileNotFoundError naming the known choices when it is absent."""
    folder = config_dir() / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise FileNotFoundError(f"{group} config {name!r} not found in {folder}; known: {known}")
    return path
