"""The import contracts of pyproject.toml: layers point one way (eupe <- rap_backbone <- navsim_agents <-
bench2drive, imports inside functions included) and no package has an import cycle.

The checker is import-linter (``lint-imports``, also run by CI); it runs in a subprocess whose ``sys.path``
starts at the tree under test, so the probe packages below never meet the real ones.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("eupe", "rap_backbone", "navsim_agents", "bench2drive")  # lowest first


def _lint(root: Path, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def _probe_tree(tmp_path: Path, modules: dict[str, str]) -> Path:
    """The four layer packages, empty except for ``modules`` (dotted name -> source), and our pyproject."""
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    for name, source in modules.items():
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.write_text(textwrap.dedent(source))
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    return tmp_path


def test_the_repository_keeps_its_import_contracts():
    result = _lint(REPO, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_inside_a_function_breaks_the_contract(tmp_path):
    root = _probe_tree(tmp_path, {
        "rap_backbone.raster": """
            def render():
                from navsim_agents.data import maps  # upward, and lazily: still a dependency
                return maps
        """,
        "navsim_agents.data": "import rap_backbone.raster  # downward: allowed\n",
    })
    result = _lint(root, root / "pyproject.toml")
    assert result.returncode != 0
    assert "rap_backbone.raster -> navsim_agents.data" in result.stdout


def test_downward_imports_pass_and_a_cycle_inside_a_package_breaks(tmp_path):
    (tmp_path / "ok").mkdir()
    downward = _probe_tree(tmp_path / "ok", {
        "bench2drive.agent": "import navsim_agents.scoring\nimport rap_backbone.planner\nimport eupe.models\n",
        "navsim_agents.scoring": "import rap_backbone.planner\n",
        "rap_backbone.planner": "import eupe.models\n",
        "eupe.models": "",
    })
    assert _lint(downward, downward / "pyproject.toml").returncode == 0

    (tmp_path / "cycle").mkdir()
    cyclic = _probe_tree(tmp_path / "cycle", {
        "bench2drive.metrics": "def main():\n    from bench2drive import world\n",
        "bench2drive.world": "from bench2drive import metrics\n",
    })
    result = _lint(cyclic, cyclic / "pyproject.toml")
    assert result.returncode != 0
    assert "No cycles are allowed in bench2drive" in result.stdout
