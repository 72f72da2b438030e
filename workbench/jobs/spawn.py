"""The one way the workbench starts a process of its own: `python -m workbench ...`, safely.

Every job, worker, export, search and profile process is started by `spawn`: no standard input, its output
appended to a log file, `KDW_RUNS_DIR` pointing at the store, and never importing from the caller's
working directory (`python -P` on Python >= 3.11; on 3.10 the child starts in the package's own folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def python_cmd() -> list[str]:
    """`python -m workbench` that never imports from the caller's working directory (-P, Python >= 3.11;
    on 3.10 the subprocesses start in `trusted_cwd()` instead)."""
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "workbench"]


def trusted_cwd() -> str:
    """The folder that holds the installed workbench package: a child started here imports only that."""
    return str(Path(__file__).resolve().parents[2])


def spawn(args: list[str], store_root: Path, log_path: Path, *, env: dict | None = None, detached: bool = True,
          command: list[str] | None = None) -> subprocess.Popen:
    """Start ``python -m workbench ARGS`` (or `command`) for the store at `store_root`, appending its output
    to `log_path`. `detached` puts it in its own session, so it outlives the app or notebook that started it."""
    environment = dict(os.environ if env is None else env, KDW_RUNS_DIR=str(store_root))
    with open(log_path, "a") as log:
        return subprocess.Popen(command or [*python_cmd(), *args], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=environment, cwd=trusted_cwd(),
                                start_new_session=detached)
