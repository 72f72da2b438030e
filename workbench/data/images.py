"""Real image data: folders and CSV manifests, decoded once into a uint8 cache on disk, and streamed when large.

- An **image folder** holds one subfolder of images per class (optionally inside ``train/`` and
  ``test/``); a **CSV manifest** lists ``path,label`` rows (optionally a third column ``split``:
  train or test), paths relative to the CSV.
- Images are decoded as torchvision's ``ImageFolder`` decodes them (RGB) and resized to a square
  size once; the uint8 result is cached on disk under ``$KDW_CACHE_DIR`` (default
  ``~/.cache/kd-workbench/images``), keyed by the files' names, sizes and modification times and by
  the size, and memory-mapped, so the next run starts at once.
- A file that cannot be decoded is skipped and counted (`DecodedImages.skipped`), or refused with its
  path when every file of a class fails.
- `LazyImages` is a (N, C, H, W) tensor-like view of such a cache that normalises (and resizes, and
  converts channels) one batch at a time; `StreamLoader` feeds it to training through a
  `torch.utils.data.DataLoader` with workers. `workbench.data.datasets.load_dataset` chooses between this and
  the in-memory tensors (see `memory_budget`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.data.transforms import AUGMENTATIONS, View, adapt_pixels, batch_crop, batch_flip_lr, normalise
from workbench.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

CACHE_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("KDW_CACHE_DIR") or Path.home() / ".cache" / "kd-workbench") / "images"


def memory_budget() -> int:
    """Bytes of float32 images a data set may take in memory before it streams from its uint8 cache instead:
    ``$KDW_MEMORY_BUDGET``, else a quarter of this machine's RAM."""
    env = os.environ.get("KDW_MEMORY_BUDGET")
    if env:
        return int(float(env))
    try:
        import psutil

        return psutil.virtual_memory().total // 4
    except Exception:
        return 4 * 1024 ** 3


# ---------------------------------------------------------------------------
# listing the files

@dataclass
class Listing:
    files: list[Path]
    labels: list[int]
    classes: tuple[str, ...]
    splits: list[str] | None = None  # "train" / "test" per file, when the source says


def list_folder(folder: Path) -> Listing:
    """Class subfolders of images under `folder`; DataError in one sentence when there are none."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file, not a folder: an image folder holds one subfolder of images per class "
                        "(a CSV list of images is the csv data set)")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES][:3]
        raise DataError(f"{folder} needs one subfolder of images per class (at least two), found "
                        f"{classes or 'none'}" + (f" and loose images such as {', '.join(loose)}" if loose else ""))
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"class folder {folder / cls} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return Listing(files, labels, tuple(classes))


def list_csv(path: Path, allow_outside: bool = False) -> Listing:
    """Rows `path,label[,split]` of a CSV manifest (a header row is optional). Each image must lie under the
    manifest's own folder (symbolic links resolved) unless `allow_outside`: a manifest from elsewhere cannot
    make the workbench open ../../etc/passwd or any other file of the machine."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not "".join(row).strip():
                continue
            if i == 0 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                continue  # a header
            if len(row) < 2:
                raise DataError(f"{path} line {i + 1}: expected path,label[,split], got {row!r}")
            rows.append([c.strip() for c in row])
    if not rows:
        raise DataError(f"{path} lists no images")
    classes = tuple(sorted({r[1] for r in rows}))
    if len(classes) < 2:
        raise DataError(f"{path} needs at least two labels, found {list(classes)}")
    files, labels, splits = [], [], []
    home = path.parent.resolve()
    for r in rows:
        p = Path(r[0]) if Path(r[0]).is_absolute() else path.parent / r[0]
        if not allow_outside and not p.resolve().is_relative_to(home):
            raise DataError(f"{path}: image {r[0]} lies outside the manifest's folder {home}; move it there, or "
                            "pass --allow-outside if the manifest is yours")
        if not p.is_file():
            raise DataError(f"{path}: image {r[0]} does not exist (looked for {p})")
        files.append(p)
        labels.append(classes.index(r[1]))
        split = r[2].lower() if len(r) > 2 and r[2] else "train"
        if split not in ("train", "test"):
            raise DataError(f"{path}: split must be train or test, got {r[2]!r} for {r[0]}")
        splits.append(split)
    return Listing(files, labels, classes, splits if any(s == "test" for s in splits) else None)


# ---------------------------------------------------------------------------
# decoding into the cache

@dataclass
class DecodedImages:
    path: Path  # the cache file: (N, 3, size, size) uint8, .npy
    y: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    splits: np.ndarray | None  # (N,) bool, True for test, when the source says
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded
    key: str = ""


def _listing_key(listing: Listing, size: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{listing.classes}".encode())
    for p, label, split in zip(listing.files, listing.labels, listing.splits or [""] * len(listing.files)):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{label}|{split}\n".encode())
    return h.hexdigest()[:24]


def decode_one(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 RGB of one image file: torchvision's ImageFolder loader, then an antialiased resize."""
    from torchvision.datasets.folder import default_loader
    from torchvision.transforms.v2 import functional as TF

    img = default_loader(str(path))  # RGB, as ImageFolder decodes it (torchvision.io's decoders are deprecated)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return TF.resize(x, [size, size], antialias=True).numpy()


def decode(listing: Listing, size: int, progress=None) -> DecodedImages:
    """The listing's images at `size`, from the disk cache or decoded now (and cached)."""
    key = _listing_key(listing, size)
    folder = cache_root()
    data, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if data.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            np.load(data, mmap_mode="r")  # readable?
            return DecodedImages(data, np.asarray(meta["y"], dtype=np.int64), tuple(meta["classes"]),
                                 np.asarray(meta["test"], dtype=bool) if meta.get("test") is not None else None,
                                 meta.get("skipped", []), key)
        except Exception:  # a torn cache is decoded again, never trusted
            pass
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.npy"
    n = len(listing.files)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    keep, skipped, failed_by_class = [], [], {}
    for i, p in enumerate(listing.files):
        try:
            out[len(keep)] = decode_one(p, size)
            keep.append(i)
        except Exception as e:
            skipped.append(f"{p} ({type(e).__name__})")
            failed_by_class[listing.labels[i]] = failed_by_class.get(listing.labels[i], 0) + 1
        if progress is not None and (i + 1) % 256 == 0:
            progress(i + 1, n)
    counts = np.bincount(np.asarray(listing.labels), minlength=len(listing.classes))
    for label, bad in failed_by_class.items():
        if bad == counts[label]:
            raise DataError(f"no image of class {listing.classes[label]!r} could be decoded, e.g. {skipped[0]}")
    out.flush()
    del out
    full = np.load(tmp, mmap_mode="r")
    if len(keep) < n:  # compact: the cache holds the decodable images only
        final = np.lib.format.open_memmap(data.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8,
                                          shape=(len(keep), 3, size, size))
        final[:] = full[:len(keep)]
        final.flush()
        del final, full
        os.replace(data.with_suffix(".tmp.npy"), data)
        tmp.unlink()
    else:
        del full
        os.replace(tmp, data)
    y = np.asarray(listing.labels, dtype=np.int64)[keep]
    test = None if listing.splits is None else np.asarray([listing.splits[i] == "test" for i in keep])
    meta = {"y": y.tolist(), "classes": list(listing.classes), "test": None if test is None else test.tolist(),
            "skipped": skipped, "size": size}
    tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return DecodedImages(data, y, listing.classes, test, skipped, key)


# ---------------------------------------------------------------------------
# views: channels, size and normalisation, a batch at a time


class LazyImages:
    """A (N, C, H, W) float32 tensor-like view of uint8 images on disk: indexing decodes nothing, it reads
    the rows from the memory map, converts them to the view and normalises them, one batch at a time."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, path: Path, index: np.ndarray, view: View):
        self.path, self.index, self.view = Path(path), np.asarray(index, dtype=np.int64), view
        self._data = None

    @property
    def data(self) -> np.ndarray:
        if self._data is None:  # opened lazily, and again in each DataLoader worker
            self._data = np.load(self.path, mmap_mode="r")
        return self._data

    def __getstate__(self):  # a worker gets the path, never a copy of the images
        return {"path": self.path, "index": self.index, "view": self.view, "_data": None}

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.view.channels, self.view.size, self.view.size))

    def __len__(self) -> int:
        return len(self.index)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        order = np.argsort(rows)  # memory maps read fastest in order
        raw = torch.from_numpy(np.ascontiguousarray(self.data[rows[order]]))
        out = torch.empty_like(raw)
        out[torch.from_numpy(order)] = raw
        pixels = out.float().div_(255)
        return normalise(adapt_pixels(pixels, self.view.channels, self.view.size), self.view.mean, self.view.std)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self._rows(self.index[[key]])[0]
        if isinstance(key, slice):
            return self._rows(self.index[key])
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self._rows(self.index[np.asarray(key)])

    def to(self, *args, **kwargs) -> "LazyImages":
        return self  # batches move to the device as they are read

    def cpu(self) -> "LazyImages":
        return self

    def with_view(self, view: View) -> "LazyImages":
        return LazyImages(self.path, self.index, view)

    def pixel_stats(self, chunk: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the [0, 1] pixels, in chunks (never the whole set in memory)."""
        s = s2 = 0.0
        n = 0
        for i in range(0, len(self.index), chunk):
            x = torch.from_numpy(np.ascontiguousarray(self.data[np.sort(self.index[i:i + chunk])])).double() / 255
            s = s + x.sum((0, 2, 3))
            s2 = s2 + (x * x).sum((0, 2, 3))
            n += x.shape[0] * x.shape[2] * x.shape[3]
        mean = s / n
        std = (s2 / n - mean ** 2).clamp_min(0).sqrt() + 1e-8
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x: LazyImages, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitems__(self, idx):  # a whole batch per call: one sorted read of the memory map
        idx = np.asarray(idx)
        return self.x[idx], self.y[torch.from_numpy(idx)], torch.from_numpy(idx)


def _collate(batch):
    return batch


class StreamLoader:
    """The `BatchLoader` interface over `LazyImages`: a seeded permutation cut into batches, read by a
    `DataLoader` with worker processes, augmented on the training device (flips; crops)."""

    def __init__(self, x: LazyImages, y: torch.Tensor, batch_size: int, *, device, augment: str = "none",
                 crop_pad: int = 2, indices: torch.Tensor | None = None, steps: int | None = None, seed: int = 0,
                 workers: int | None = None, shard: tuple[int, int] = (0, 1)):

        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.x, self.y, self.device = x, y.cpu(), torch.device(device)
        self.indices = torch.arange(len(x)) if indices is None else indices.cpu()
        self.batch_size = min(batch_size, len(self.indices))
        self.flip, self.crop_pad = "flip" in augment, (crop_pad if "crop" in augment else 0)
        self.steps = steps
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world = shard  # data parallel: each rank reads only its slice of every global batch
        self.workers = max(0, min(4, (os.cpu_count() or 1) - 1)) if workers is None else workers

    def __len__(self) -> int:
        return self.steps if self.steps is not None else len(self.indices) // self.batch_size

    def __iter__(self):
        n, bs = len(self.indices), self.batch_size
        reps = 1 if self.steps is None else -(-self.steps * bs // n)
        order = self.indices[torch.cat([torch.randperm(n, generator=self.generator) for _ in range(reps)])]
        part = bs // self.world
        batches = [order[i * bs:(i + 1) * bs][self.rank * part:(self.rank + 1) * part].tolist()
                   if self.world > 1 else order[i * bs:(i + 1) * bs].tolist() for i in range(len(self))]
        flips = [(torch.rand(bs, generator=self.generator) < 0.5)[self.rank * part:(self.rank + 1) * part]
                 if self.world > 1 else torch.rand(bs, generator=self.generator) < 0.5
                 for _ in batches] if self.flip else None
        loader = torch.utils.data.DataLoader(_Rows(self.x, self.y), batch_sampler=batches, collate_fn=_collate,
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for i, (x, y, idx) in enumerate(loader):
            x, y, idx = x.to(self.device, non_blocking=True), y.to(self.device), idx.to(self.device)
            flip = None
            if self.flip:
                flip = flips[i].to(self.device)
                x = batch_flip_lr(x, flip)
            if self.crop_pad:
                x = batch_crop(x, self.crop_pad)
            yield x, y, idx, flip


# ---------------------------------------------------------------------------
# CIFAR-100


