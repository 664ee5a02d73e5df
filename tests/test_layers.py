"""The layer contract (`lint-imports`, in `make lint`) covers the core and fails on an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "indexer", "bench", "train")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_core_module_is_in_the_core_layer():
    """A new module in engine/ must be placed in a layer, or nothing checks what it imports:
    the Python API (engine.api) has a layer of its own, every other module is core."""
    core = {name.strip() for name in layers()[-1].split(":")}
    assert "engine.api" in layers()
    on_disk = {
        f"engine.{path.stem}"
        for path in (ROOT / "engine").glob("*.py")
        if path.stem not in ("__init__", "__main__", "api")
    }
    assert on_disk == core


def test_the_contract_holds_and_breaks_on_an_upward_import(tmp_path):
    """The tree as it is passes; a copy with one indexer module importing the app fails."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("results", "gpu")
        )
    kept = lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    (tmp_path / "indexer" / "upward.py").write_text("from engine.app.cli import cli\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "indexer.upward -> engine.app.cli" in broken.stdout
