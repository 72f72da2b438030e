"""Durable file writes and defensive JSON reads, shared by every layer that writes to disk.

`atomic_write` is the one way the workbench replaces a file: it writes a temporary file beside the
target, flushes and fsyncs it, renames it over the target with `os.replace` and fsyncs the folder, so
a reader sees the old file or the new one, never a part, and a crash leaves no half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from workbench.errors import RunStoreError


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new file, a rename) durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None] | bytes | str) -> None:
    """Replace `path` atomically and durably.

    `write` is the content (bytes or text), or a function that writes the file at the temporary path it is
    given (for libraries that save to a path: safetensors, torch.save, numpy).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if callable(write):
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def atomic_write_json(path: Path, obj) -> None:
    """Write JSON to `path` so that readers see the old file or the new one, never a part."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default))


def read_json(path: Path, default=None):
    """A JSON file's content, `default` if it does not exist, RunStoreError saying why if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return default
    except OSError as e:
        raise RunStoreError(f"unreadable: {e.strerror or e} ({path})") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunStoreError(f"unreadable: not UTF-8 text ({path})") from None
    except json.JSONDecodeError as e:
        what = "empty" if not data.strip() else f"not valid JSON ({e.msg} at line {e.lineno})"
        raise RunStoreError(f"unreadable: {what} ({path})") from None


def read_json_object(path: Path) -> dict | None:
    """A JSON object (dict) from `path`; None if the file does not exist; RunStoreError if it is anything else."""
    obj = read_json(path, None)
    if obj is None and Path(path).is_file():
        raise RunStoreError(f"unreadable: holds null, not an object ({path})")
    if obj is not None and not isinstance(obj, dict):
        raise RunStoreError(f"unreadable: holds a JSON {type(obj).__name__}, not an object ({path})")
    return obj
