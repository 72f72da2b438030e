"""The one way the workbench starts a process of its own: a typed `Command`, and `spawn`.

Every process the workbench starts (a job, a worker, a rank of a distributed run under torch.distributed.run, an
export, a search, a profile, the Ray watchdog) is one `Command` value: its arguments, the module that reads them,
and the launcher that starts it, if any. `Command.to_argv` is the only place that builds a Python command line
(the app server's, `cli.serve`, is Streamlit's own), and `spawn` the only place that starts one: no standard
input, its output appended to a log file, `KDW_RUNS_DIR` pointing at the store, and never importing from the
caller's working directory (`python -P` on Python >= 3.11; on 3.10 the child starts in the package's own folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def python_cmd() -> list[str]:
    """`python` that never imports from the caller's working directory (-P, Python >= 3.11; on 3.10 the
    subprocesses start in `trusted_cwd()` instead)."""
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else [])]


def trusted_cwd() -> str:
    """The folder that holds the installed workbench package: a child started here imports only that."""
    return str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class Command:
    """One process the workbench starts, as a value: `python -P -m MODULE ARGS...`, or the same module under a
    launcher module (torch.distributed.run) with the launcher's own options."""

    args: tuple[str, ...]  # what the module reads (for workbench: a command of `kdw` and its options)
    module: str = "workbench"  # python -m MODULE
    launcher: str | None = None  # a module that starts MODULE itself: torch.distributed.run
    launcher_args: tuple[str, ...] = ()  # its options (--nproc-per-node=2, ...)

    def to_argv(self) -> list[str]:
        """The command line: the one place a Python command line is built."""
        if self.launcher:
            return [*python_cmd(), "-m", self.launcher, *self.launcher_args, "-m", self.module, *self.args]
        return [*python_cmd(), "-m", self.module, *self.args]

    # -- the workbench's processes ------------------------------------------------------------------------
    @classmethod
    def kdw(cls, verb: str, *args: str, store_root: Path | None = None) -> "Command":
        """`kdw VERB ARGS --runs-dir STORE` (job, worker, export, profile, search-job, rank, ...)."""
        return cls((verb, *map(str, args), *(["--runs-dir", str(store_root)] if store_root is not None else [])))

    @classmethod
    def watchdog(cls, pid: int, pid_started: float, folder: Path) -> "Command":
        """The watchdog that ends an embedded Ray (and removes its folder) when its driver dies."""
        return cls((str(pid), str(pid_started), str(folder)), module="workbench.jobs.watchdog")

    def under_torchrun(self, *launcher_args: str) -> "Command":
        """This command as each rank of torch.distributed.run, with the launcher's options."""
        return Command(self.args, self.module, "torch.distributed.run", tuple(launcher_args))


def spawn(command: Command, store_root: Path | None, log_path: Path | None, *, env: dict | None = None,
          detached: bool = True) -> subprocess.Popen:
    """Start `command` for the store at `store_root`, appending its output to `log_path` (None: discarded).
    `detached` puts it in its own session, so it outlives the app or notebook that started it."""
    environment = dict(os.environ if env is None else env)
    if store_root is not None:
        environment["KDW_RUNS_DIR"] = str(store_root)
    with (open(log_path, "a") if log_path is not None else open(os.devnull, "w")) as log:
        return subprocess.Popen(command.to_argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=environment, cwd=trusted_cwd(), start_new_session=detached)
