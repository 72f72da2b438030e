"""Shared fixtures: an isolated run store, single-threaded torch, offline by construction."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"

import leftovers  # noqa: E402

leftovers.mark_session()  # every process the suite starts carries the mark (see pytest_sessionfinish)


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if a Ray, Streamlit, JupyterLab or Chromium process that it started still runs."""
    left = leftovers.wait_for_none(grace_s=30.0)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  {kind}: pid {p.pid}: {cmd}" for p, kind, cmd in left]
    text = "processes started by the test suite are still running:\n" + "\n".join(lines)
    if reporter:
        reporter.write_line(text, red=True)
    else:
        print(text, file=sys.stderr)
    for p, _, _ in left:  # clean up what the failure reports
        try:
            p.kill()
        except Exception:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Every test gets its own run store and a single thread (values are compared exactly)."""
    monkeypatch.setenv("KDW_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("KDW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KDW_DATA_DIR", raising=False)
    torch.set_num_threads(1)
    yield


@pytest.fixture
def runs_dir(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def store(runs_dir):
    from workbench.store.runs import RunStore

    return RunStore(runs_dir)


@pytest.fixture(scope="session")
def digits():
    from workbench.data.datasets import load_dataset

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


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 12, size=(20, 24),
                      broken: int = 0) -> Path:
    """A folder of small generated PNGs, one subfolder per class, each class a different dominant colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = (rng.random((*size, 3)) * 80).astype(np.uint8)
            a[..., c % 3] += 150
            Image.fromarray(a).save(root / cls / f"{i}.png")
    for i in range(broken):
        (root / classes[0] / f"broken{i}.png").write_bytes(b"not an image")
    return root
