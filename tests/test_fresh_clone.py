"""A fresh clone must carry everything the package needs: nothing may live only in a warm work tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    if not _git("rev-parse", "--verify", "-q", "HEAD").strip():
        pytest.skip("no commit yet")
    dest = tmp_path_factory.mktemp("fresh") / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    return dest


def test_ci_entry_runs_make_test(clone: Path) -> None:
    run = (clone / ".ci" / "run").read_text()
    assert "make test" in run
    assert os.access(clone / ".ci" / "run", os.X_OK)
    # The Makefile must set itself up from the committed files alone.
    dry = subprocess.run(["make", "-n", "test"], cwd=clone, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "requirements.txt" in dry.stdout and "pytest" in dry.stdout


def test_clone_imports_every_module_and_asset(clone: Path) -> None:
    """Import every library module from the clone alone (not this work tree)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import dvqvae_model\n"
        f"assert dvqvae_model.__file__.startswith({str(clone)!r}), dvqvae_model.__file__\n"
        "for m in pkgutil.walk_packages(dvqvae_model.__path__, 'dvqvae_model.'):\n"
        "    importlib.import_module(m.name)\n"
        "from dvqvae_model.hand.hand_model import load_hand_model\n"
        "hand = load_hand_model('standin')\n"
        "print(hand.fingerprint)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(clone)
    env["DVQVAE_CACHE_DIR"] = str(clone / ".cache")
    # -P: do not put the caller's cwd first; -c runs with cwd = the clone.
    res = subprocess.run([sys.executable, "-P", "-c", code], cwd=clone, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.strip()) >= 8
