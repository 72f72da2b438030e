"""Ends an embedded Ray with the process that started it, and removes its temporary folder.

``python -m workbench.jobs.watchdog PID START FOLDER`` watches the driver (pid and start time: a reused pid is
not the driver). While the driver lives it notes the processes below it (Ray's GCS, raylet, agents, workers)
every half second. When the driver stops Ray itself, it removes FOLDER and the watchdog exits; when the driver
dies without doing so (kill -9), the watchdog kills what it noted, and every process whose command line names
FOLDER, and removes FOLDER. Ray's own agents otherwise linger for minutes after a killed driver.
Only psutil and the standard library: it starts in well under a second.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import psutil


def _alive(pid: int, started: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - started) < 1.0
    except psutil.Error:
        return False


def end_processes(procs: list, wait_s: float = 0.0) -> None:
    """Give these processes `wait_s` seconds to exit, then kill the rest and wait for them (also used by
    `search.shutdown` for the processes of an embedded Ray)."""
    _, alive = psutil.wait_procs(procs, timeout=wait_s) if wait_s > 0 else ([], procs)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def watch(pid: int, started: float, folder: str, every_s: float = 0.5) -> int:
    """Wait for the driver to end; clean up after it if it left Ray running. Returns how many processes it
    ended."""
    noted: dict[int, float] = {}
    while _alive(pid, started) and os.path.isdir(folder):
        try:
            for child in psutil.Process(pid).children(recursive=True):
                noted.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass
        time.sleep(every_s)
    if not os.path.isdir(folder):  # the driver stopped Ray and removed the folder: nothing left to do
        return 0
    victims = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        if p.info["pid"] == os.getpid():
            continue
        mine = noted.get(p.info["pid"]) is not None and abs(noted[p.info["pid"]] - (p.info["create_time"] or 0)) < 1
        if mine or folder in " ".join(p.info["cmdline"] or []):
            victims.append(p)
    end_processes(victims)
    shutil.rmtree(folder, ignore_errors=True)
    return len(victims)


if __name__ == "__main__":
    sys.exit(0 if watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]) >= 0 else 1)
