"""`kdw app`: the workbench in the browser (Streamlit), from a clone or an installed wheel alike."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

from workbench.logs import logger

log = logger("workbench.cli")

# the settings of the repository's .streamlit/config.toml, as flags: a wheel has no such file beside it
STREAMLIT_OPTIONS = {"server.headless": "true", "server.fileWatcherType": "none", "server.maxUploadSize": "50",
                     "browser.gatherUsageStats": "false", "client.toolbarMode": "viewer",
                     "client.showErrorDetails": "none", "theme.base": "light"}


def entry_script() -> Path:
    """The Streamlit script of the installed package (workbench/app/entry.py)."""
    return Path(__file__).resolve().parents[1] / "app" / "entry.py"


def app_command(host: str, port: int) -> list[str]:
    """The `streamlit run` command line of the workbench on host:port (through workbench.app.streamlit_run, which
    imports torch while the server starts)."""
    options = {**STREAMLIT_OPTIONS, "server.address": host, "server.port": str(port)}
    return [sys.executable, "-m", "workbench.app.streamlit_run", "run", str(entry_script()),
            *[a for k, v in options.items() for a in (f"--{k}", v)]]


def cmd_app(args) -> int:
    if importlib.util.find_spec("streamlit") is None:
        raise ValueError("kdw app needs the app extra: pip install 'kd-workbench[app]' (in a clone, `make app`)")
    if not entry_script().is_file():
        raise ValueError(f"the app's entry point is missing from this installation ({entry_script()})")
    command = app_command(args.host, args.port)
    if args.runs_dir:
        os.environ["KDW_RUNS_DIR"] = str(Path(args.runs_dir).absolute())
    if args.check:
        print(shlex.join(command))
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine can use the workbench", args.host)
    print(f"KD Workbench on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def register(add) -> dict:
    s = add("app", "open the workbench in the browser (Streamlit) on http://HOST:PORT")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--check", action="store_true", help="print the command it would run, and check that the app's "
                                                        "files are installed, without starting it")
    s.add_argument("--runs-dir", default=None, help="run store folder (default: $KDW_RUNS_DIR or ./runs)")
    return {"app": cmd_app}
