"""The installed distribution: every package and the config tree ship in the wheel, and the entry points find
their configs from any directory, outside the checkout, without it on the path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest

from eupe import config_tree

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("eupe", "rap_backbone", "navsim_agents", "bench2drive", "study")
PRIMARY_CONFIGS = sorted(p.stem for p in config_tree.CHECKOUT_CONFIG_DIR.glob("run_*.yaml"))


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _setuptools() -> dict:
    return _pyproject()["tool"]["setuptools"]


def test_every_package_on_disk_is_listed_for_the_wheel():
    cfg = _setuptools()
    listed = set(cfg["packages"])
    mapped = {pkg: REPO / folder for pkg, folder in cfg["package-dir"].items()}
    on_disk = {str(p.parent.relative_to(REPO)).replace(os.sep, ".")
               for top in LAYERS
               for p in (REPO / top).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert mapped == {config_tree.CONFIG_PACKAGE: config_tree.CHECKOUT_CONFIG_DIR}
    assert listed - on_disk == {config_tree.CONFIG_PACKAGE}


def test_every_entry_point_takes_its_configs_from_the_config_tree():
    sources = [p for top in LAYERS for p in (REPO / top).rglob("*.py") if "@hydra.main(" in p.read_text()]
    assert len(sources) >= 5  # run_pdm_score, run_training, run_metric_caching, run_distill, run_closed_loop
    for path in sources:
        for args in re.findall(r"@hydra\.main\((.*)\)", path.read_text()):
            assert "config_path=hydra_config_path()" in args, path
            name = re.search(r'config_name="([^"]+)"', args).group(1)
            assert (config_tree.CHECKOUT_CONFIG_DIR / f"{name}.yaml").is_file(), path


def test_a_checkout_reads_its_own_configs_folder():
    assert config_tree.in_checkout()
    assert config_tree.config_dir() == REPO / "configs"
    assert config_tree.hydra_config_path() == str(REPO / "configs")
    assert config_tree.config_file("planner", "small") == REPO / "configs" / "planner" / "small.yaml"
    with pytest.raises(FileNotFoundError, match=r"planner config 'nope' not found .*known: \[.*'small'"):
        config_tree.config_file("planner", "nope")


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A wheel built from the package folders alone, installed into a fresh venv; returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build a copy: setuptools writes build/ and *.egg-info beside the sources
    src.mkdir()
    cfg = _setuptools()
    folders = {p.split(".")[0] for p in cfg["packages"] if p not in cfg["package-dir"]} | set(cfg["package-dir"].values())
    for name in sorted(folders) + ["pyproject.toml", "README.md"]:
        path = REPO / name
        if path.is_dir():
            _copy_tree(path, src / name)
        else:
            (src / name).write_bytes(path.read_bytes())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp / "dist"), str(src)], check=True, env=_env())
    wheel = next((tmp / "dist").glob("eupe_drive-*.whl"))

    env_dir = tmp / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the packages of this interpreter (torch, hydra, ...), as plain paths: their .pth files (among them an
    # editable install of this checkout) stay unread, so only the wheel provides eupe-drive
    parents = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (site / "_parent_env.pth").write_text("\n".join(parents) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, env=_env())
    return python


def _copy_tree(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        if "__pycache__" in path.parts or path.is_dir():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())


def _env() -> dict[str, str]:
    """This environment without PYTHONPATH, so the checkout is not importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def test_the_wheel_ships_the_config_tree(installed_wheel, tmp_path):
    code = (
        "import importlib.util\n"
        "from hydra import compose, initialize_config_module\n"
        "for pkg in ('eupe', 'navsim_agents', 'bench2drive', 'eupe_drive_configs'):\n"
        "    print(importlib.util.find_spec(pkg).origin)\n"
        "import navsim_agents  # registers planner/schema, which configs/planner/*.yaml extend\n"
        "with initialize_config_module('eupe_drive_configs', version_base=None):\n"
        f"    for name in {PRIMARY_CONFIGS!r}:\n"
        "        print(name, len(compose(name)))\n")
    out = subprocess.run([str(installed_wheel), "-c", code], cwd=tmp_path, env=_env(), check=True,
                         capture_output=True, text=True).stdout.splitlines()
    prefix = str(installed_wheel.parents[1])
    assert len(out) == 4 + len(PRIMARY_CONFIGS) and all(line.startswith(prefix) for line in out[:4]), out
    assert all(int(line.split()[1]) > 0 for line in out[4:]), out
    assert (installed_wheel.parent / "run_pdm_score").is_file()  # NAVSIM's console script name


def test_the_wheel_scores_constant_velocity_from_outside_the_checkout(installed_wheel, tmp_path):
    proc = subprocess.run(
        [str(installed_wheel), "-m", "navsim_agents.run_pdm_score", "agent=constant_velocity",
         "split.scene_filter.max_scenes=3", "progress=false"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    csv = next((tmp_path / "exp" / "pdm_score").glob("*.csv"))  # exp_root defaults to ./exp
    df = pd.read_csv(csv, index_col=0)
    assert len(df) == 4 and df["token"].iloc[-1] == "average" and df["valid"].iloc[:-1].all()
    assert 0.0 <= df["score"].iloc[-1] <= 1.0
