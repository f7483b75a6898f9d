"""Notebooks are the source of truth: vtom/ must equal a fresh export, and notebooks must be clean."""
import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_project(tmp_path: Path) -> Path:
    for name in ("nbs", "vtom"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "kernel-ipc-*"))
    for name in ("settings.ini", "setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__", ".ipynb_checkpoints"] + [p.name for p in a.glob("kernel-ipc-*")])
    out = [f"{a.name}/{n}" for n in cmp.diff_files + cmp.left_only + cmp.right_only]
    return out + [d for sub in cmp.common_dirs for d in _differences(a / sub, b / sub)]


def test_export_in_sync(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([BIN / "nbdev_export"], cwd=proj, check=True, capture_output=True)
    diff = _differences(ROOT / "vtom", proj / "vtom")
    assert not diff, f"vtom/ differs from a fresh export of nbs/ {diff}: edit the notebooks, then run `make export`"


def test_notebooks_clean(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([BIN / "nbdev_clean"], cwd=proj, check=True, capture_output=True)
    diff = _differences(ROOT / "nbs", proj / "nbs")
    assert not diff, f"notebooks are not clean {diff}: run `make clean` (nbdev_clean) and commit"
