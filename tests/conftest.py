"""Shared fixtures: an isolated run store, single-threaded torch, offline by construction."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test gets its own run store and a single thread (values are compared exactly)."""
    monkeypatch.setenv("KDW_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("KDW_DATA_DIR", raising=False)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def store(runs_dir):
    from workbench.runs import RunStore

    return RunStore(runs_dir)


@pytest.fixture(scope="session")
def digits():
    from workbench.data import load_dataset

    return load_dataset("digits")


def kdw(*args, env=None, timeout=300, check=True):
    """Run the real `kdw` console script (python -m workbench) in a subprocess."""
    import subprocess

    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdw {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
