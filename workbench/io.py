"""Durable file writes and defensive JSON reads, shared by every layer that writes to disk.

`atomic_write` is the one way the workbench replaces a file: it writes a temporary file beside the
target, flushes and fsyncs it, renames it over the target with `os.replace` and fsyncs the folder, so
a reader sees the old file or the new one, never a part, and a crash leaves no half-written file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from None
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
    except BaseException as e:
        try:
            os.unlink(tmp)  # a half-written temporary file never stays (on a full disk it holds the space)
        except OSError:
            pass
        if _disk_full(e, path.parent):  # safetensors and torch.save say so in their own words, or not at all
            raise _named(e, path) if isinstance(e, OSError) and e.errno == errno.ENOSPC else \
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    fsync_dir(path.parent)


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether a failed write failed because the disk is full: ENOSPC, a library's message that says it
    (safetensors: "No space left on device"), or, for a library that says only "file write failed" (torch.save),
    no free space left where it wrote."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if not isinstance(e, Exception) or isinstance(e, (ValueError, TypeError, KeyError)):
        return False
    if "No space left on device" in str(e) or "StorageFull" in str(e):
        return True
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize < 64 * 1024
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _named(e: OSError, path: Path) -> OSError:
    """`e` with the file it was writing named (a write through a descriptor names none), so that a full disk
    reads "disk full (…/student.safetensors)"."""
    if e.filename:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno or 0), str(path))


def write_in_place(path: Path, data: bytes) -> None:
    """Overwrite an existing small file in its own blocks (no new file, no rename): the way to record a run's end
    when the disk is full and `atomic_write` cannot make its temporary file. Not atomic: only for that case."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def atomic_write_json(path: Path, obj, in_place_when_full: bool = False) -> None:
    """Write JSON to `path` so that readers see the old file or the new one, never a part.

    With `in_place_when_full`, a full disk (ENOSPC) makes it overwrite the existing file in place instead, compact,
    so that a status can still say how the run ended."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=json_default)
    try:
        atomic_write(path, text)
    except OSError as e:
        if not (in_place_when_full and e.errno == errno.ENOSPC and Path(path).is_file()):
            raise
        write_in_place(Path(path), json.dumps(obj, separators=(",", ":"), default=json_default).encode())


MAX_JSON_BYTES = 32 * 2 ** 20  # a run's JSON file (a summary with a confusion matrix of 1,000 classes is ~5 MB)
MAX_JSONL_BYTES = 256 * 2 ** 20  # metrics.jsonl: one line per epoch
MAX_INT_DIGITS = 64  # no figure the workbench writes has more; Python refuses more than 4,300 with a traceback
MAX_DEPTH = 64  # no file the workbench writes nests deeper than a few levels


def read_bounded(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO, a device (a link to /dev/zero), a folder or a
    larger file is RunStoreError ("unreadable: why (path)"), found before reading a byte, and never waited on
    (the file is opened without blocking). FileNotFoundError as open() raises it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise RunStoreError(f"unreadable: {e.strerror or e} ({path})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
            raise RunStoreError(f"unreadable: {kind}, not a regular file ({path})")
        if st.st_size > limit:
            raise RunStoreError(f"unreadable: {st.st_size:,} bytes, more than the {limit:,} a run's file may hold "
                                f"({path})")
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise RunStoreError(f"unreadable: more than the {limit:,} bytes a run's file may hold ({path})")
    return data


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a whole number of {len(text.lstrip('-')):,} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _depth(obj) -> int:
    """How deeply lists and objects nest in `obj` (iteratively: a forged file cannot exhaust the stack)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            todo.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def loads_bounded(data: bytes | str):
    """JSON with limits: whole numbers of at most MAX_INT_DIGITS digits and nesting at most MAX_DEPTH deep.
    ValueError (json.JSONDecodeError for bad syntax) saying what was wrong; never RecursionError."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        obj = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _depth(obj) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return obj


def read_json(path: Path, default=None, limit: int = MAX_JSON_BYTES):
    """A JSON file's content, `default` if it does not exist, RunStoreError saying why if it cannot be read: not a
    regular file, larger than `limit`, not UTF-8, not JSON, a number too long or nesting too deep."""
    try:
        data = read_bounded(path, limit)
    except FileNotFoundError:
        return default
    try:
        return loads_bounded(data)
    except UnicodeDecodeError:
        raise RunStoreError(f"unreadable: not UTF-8 text ({path})") from None
    except json.JSONDecodeError as e:
        what = "empty" if not data.strip() else f"not valid JSON ({e.msg} at line {e.lineno})"
        raise RunStoreError(f"unreadable: {what} ({path})") from None
    except ValueError as e:
        raise RunStoreError(f"unreadable: {e} ({path})") from None


def read_json_object(path: Path) -> dict | None:
    """A JSON object (dict) from `path`; None if the file does not exist; RunStoreError if it is anything else."""
    obj = read_json(path, None)
    if obj is None and Path(path).is_file():
        raise RunStoreError(f"unreadable: holds null, not an object ({path})")
    if obj is not None and not isinstance(obj, dict):
        raise RunStoreError(f"unreadable: holds a JSON {type(obj).__name__}, not an object ({path})")
    return obj
