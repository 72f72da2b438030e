"""Readers of the files that embedded image data sets come in: IDX (Fashion-MNIST) and CIFAR's python batches.

Nothing is unpickled but CIFAR's own batches, through an unpickler that admits only dicts, lists, bytes and
numpy arrays. Downloads happen only when asked for (``download=True``), through torchvision.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from workbench.errors import DataError

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def fashion_mnist_dirs(root=None) -> list[Path]:
    """Folders searched for the Fashion-MNIST IDX files, in order."""
    dirs = []
    if root:
        dirs += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    if os.environ.get("KDW_DATA_DIR"):
        d = Path(os.environ["KDW_DATA_DIR"])
        dirs += [d, d / "fashion-mnist", d / "FashionMNIST" / "raw"]
    dirs += [Path("data") / "fashion-mnist", Path("data") / "FashionMNIST" / "raw",
             Path("/usr/share/datasets/fashion-mnist")]
    return dirs


def _find_fashion_mnist(root) -> Path:
    for d in fashion_mnist_dirs(root):
        if all((d / f).is_file() or (d / f[:-3]).is_file() for f in FASHION_FILES):
            return d
    raise DataError(
        "Fashion-MNIST was not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu; `make` does this when run as root), or put the four IDX files "
        f"({', '.join(FASHION_FILES)}) in $KDW_DATA_DIR or ./data/fashion-mnist, "
        "or pass download=True / --download when online.")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({arr.size} values for shape {shape})")
    return arr.reshape(shape)


def _raw_fashion_mnist(root, download):
    try:
        d = _find_fashion_mnist(root)
    except DataError:
        if not download:
            raise
        d = _torchvision_download("fashion-mnist", root)

    def load(f):
        p = d / f
        return read_idx(p if p.is_file() else d / f[:-3])

    x_tr, y_tr, x_te, y_te = (load(f) for f in FASHION_FILES)
    x_tr = x_tr[:, None] / np.float32(255)
    x_te = x_te[:, None] / np.float32(255)
    return x_tr, y_tr, x_te, y_te, str(d)


def _torchvision_download(name: str, root) -> Path:
    """Fetch with torchvision (online only); returns the folder holding the raw files."""
    import torchvision

    target = Path(root or os.environ.get("KDW_DATA_DIR") or "data")
    try:
        if name == "fashion-mnist":
            torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
            return target / "FashionMNIST" / "raw"
        torchvision.datasets.CIFAR10(str(target), train=True, download=True)
        return target / "cifar-10-batches-py"
    except Exception as e:  # network errors come in many types
        raise DataError(f"downloading {name} failed ({e}); are you online?") from e


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches: dicts, lists, bytes and numpy arrays, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch file")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path} is not a CIFAR-10 python batch ({e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no data/labels)")
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(labels, dtype=np.int64)


def _raw_cifar10(root, download):
    candidates = []
    for base in [root, os.environ.get("KDW_DATA_DIR"), "data"]:
        if base:
            candidates += [Path(base), Path(base) / "cifar-10-batches-py"]
    d = next((c for c in candidates if (c / "data_batch_1").is_file() and (c / "test_batch").is_file()), None)
    if d is None:
        if not download:
            raise DataError(
                "CIFAR-10 was not found. Put the python version (the folder cifar-10-batches-py, "
                "with data_batch_1..5 and test_batch) in $KDW_DATA_DIR or ./data, "
                "or pass download=True / --download when online.")
        d = _torchvision_download("cifar10", root)
    parts = [_load_cifar_batch(d / f"data_batch_{i}") for i in range(1, 6) if (d / f"data_batch_{i}").is_file()]
    x_tr = np.concatenate([p[0] for p in parts]) / np.float32(255)
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = _load_cifar_batch(d / "test_batch")
    return x_tr, y_tr, x_te / np.float32(255), y_te, str(d)


def find_cifar100(root) -> Path | None:
    for base in [root, os.environ.get("KDW_DATA_DIR"), "data"]:
        if base:
            for c in (Path(base), Path(base) / "cifar-100-python"):
                if (c / "train").is_file() and (c / "test").is_file():
                    return c
    return None


def read_cifar100(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], str]:
    """(x_train, y_train, x_test, y_test, classes, source) from the python version (cifar-100-python)."""

    d = find_cifar100(root)
    if d is None:
        raise DataError("CIFAR-100 was not found. Put the python version (the folder cifar-100-python, with "
                        "train, test and meta) in $KDW_DATA_DIR or ./data, or pass its folder with --data-dir")

    def load(name):
        with open(d / name, "rb") as f:
            try:
                return _NumpyOnlyUnpickler(f, encoding="bytes").load()
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"{d / name} is not a CIFAR-100 python file ({e})") from e

    def split(name):
        obj = load(name)
        data = obj.get(b"data") if isinstance(obj, dict) else None
        labels = obj.get(b"fine_labels") if isinstance(obj, dict) else None
        if data is None or labels is None:
            raise DataError(f"{d / name} is not a CIFAR-100 python file (no data/fine_labels)")
        return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    x_tr, y_tr = split("train")
    x_te, y_te = split("test")
    classes = tuple(str(i) for i in range(100))
    if (d / "meta").is_file():
        meta = load("meta")
        names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return x_tr, y_tr, x_te, y_te, classes, str(d)


def read_csv_rows(path: Path, what: str, needs: str) -> list[list[str]]:
    """The non-blank rows of a CSV file `what` (a table, a text CSV) whose first row is a header; DataError in one
    sentence for a missing, non-regular or empty file (`needs` says what its header must hold)."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and "".join(r).strip()]
    if not rows:
        raise DataError(f"{what} {path} is empty: it needs {needs} and one row per sample")
    return rows
