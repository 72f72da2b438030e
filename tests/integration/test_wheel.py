"""A built wheel works on its own: the shipped teachers and the app's entry point are inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(out), str(ROOT)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("kd_workbench-*.whl")
    return path


def test_the_wheel_holds_the_teachers_and_the_app(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for teacher in ("digits-cnn", "fashion-mnist-cnn"):
        assert f"workbench/assets/teachers/{teacher}.safetensors" in names
        assert f"workbench/assets/teachers/{teacher}.json" in names
    assert "workbench/app/entry.py" in names and "workbench/cli/serve.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "notebooks/")) for n in names)


@pytest.mark.slow
def test_the_installed_wheel_finds_its_files_outside_the_clone(wheel, tmp_path):
    """Installed with --no-deps into a fresh venv beside this one (whose packages it borrows through a .pth line,
    which adds the folder without loading this venv's editable install), run from a folder outside the clone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True, timeout=300)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "kdw-test-borrow.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("KDW_ASSETS_DIR", "PYTHONPATH")}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    where = subprocess.run([str(py), "-c", "import workbench; print(workbench.__file__)"], check=True, **run)
    assert where.stdout.strip().startswith(site), where.stdout  # the wheel's copy, not the clone's
    teachers = subprocess.run([str(venv / "bin" / "kdw"), "teachers"], **run)
    assert teachers.returncode == 0, teachers.stderr
    assert "digits-cnn" in teachers.stdout and "fashion-mnist-cnn" in teachers.stdout
    app = subprocess.run([str(venv / "bin" / "kdw"), "app", "--check"], **run)
    assert app.returncode == 0, app.stderr
    assert f"{site}/workbench/app/entry.py" in app.stdout and "--client.showErrorDetails none" in app.stdout
