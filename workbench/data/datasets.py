"""Data sets as in-memory tensors, with a fixed validation split and batch augmentation.

Every data set loads once into normalised float32 tensors of shape (N, C, H, W).
A fixed, seeded validation split is carved from the training set, so every run
on the same data set selects its best epoch on the same images. Batches are
slices of a random permutation of the tensors that already sit on the training
device, and augmentation works on whole batches (see `batch_flip_lr`,
`batch_crop`): no per-sample Python runs in the training loop.

Data sets by name:

- ``digits``: scikit-learn's 8x8 digits (ships in the wheel).
- ``fashion-mnist``: the four IDX ``.gz`` files, looked up in ``$KDW_DATA_DIR``,
  ``./data`` and ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``dataset-fashion-mnist``); torchvision's download only with ``download=True``.
- ``cifar10``: the python batches (``cifar-10-batches-py``) from a local folder,
  or torchvision's download with ``download=True``.
- ``cifar100``: the python version (``cifar-100-python``) from a local folder.
- ``image-folder``: a folder of class subfolders of images (optionally with
  ``train/`` and ``test/`` subfolders), decoded once into a uint8 cache on disk
  (workbench.data.images).
- ``csv``: a CSV manifest of ``path,label[,split]`` rows (``--data-dir`` is the CSV file).

Image folders and manifests whose float32 tensors would take more than
`images.memory_budget()` (a quarter of the RAM, or ``$KDW_MEMORY_BUDGET`` bytes) are
not loaded into memory: their images stay in the uint8 cache and are streamed,
normalised one batch at a time (`images.LazyImages`, `images.StreamLoader`).

Every data set can be *viewed* at another size, channel count and normalisation
(`Dataset.view`): that is how a torchvision model sees Fashion-MNIST at 32×32 in
colour, or a teacher and a student see the same images at their own sizes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from workbench.data.images import LazyImages, Listing, decode, list_csv, list_folder, memory_budget
from workbench.data.readers import _find_fashion_mnist, _raw_cifar10, _raw_fashion_mnist, read_cifar100
from workbench.data.transforms import View, convert
from workbench.errors import DataError

SPLIT_SEED = 0  # the validation/test carve-outs never change with the training seed
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "image-folder", "csv")
DATASETS = IMAGE_DATASETS  # the image data sets; workbench.tasks.DATASETS lists those of every task


@dataclass
class Dataset:
    """A whole data set as normalised tensors, split into train, val and test."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32, normalised
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the raw [0, 1] pixels of the train split
    std: tuple[float, ...]
    default_augment: str = "none"  # what makes sense for this kind of image
    fingerprint: str = ""  # identifies the exact tensors (for caches keyed on data)
    source: str = ""  # where the files came from
    skipped: list = field(default_factory=list)  # image files that could not be decoded
    feature_names: tuple = ()  # a table's column names
    vocab: dict | None = None  # text: {"tokenizer", "tokenizer_id", "vocab_size", "pad_id", "max_length"}
    texts: dict | None = None  # text: {"train" | "val" | "test": the strings}, for showing samples
    _device_copies: dict = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # (C, H, W)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def streamed(self) -> bool:
        """True when the images stay on disk and are normalised a batch at a time (images.LazyImages)."""
        return not isinstance(self.x_train, torch.Tensor)

    def input_view(self):
        """How the images are seen (a `View`), or None for samples that are not images."""
        if len(self.input_shape) != 3:
            return None
        C, H, W = self.input_shape
        return View(C, H, tuple(self.mean), tuple(self.std))

    def stats_for(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """This data set's mean and std, for images converted to `channels` (grey ↔ colour)."""
        if channels == len(self.mean):
            return tuple(self.mean), tuple(self.std)
        if len(self.mean) == 1:
            return tuple(self.mean) * channels, tuple(self.std) * channels
        return (sum(self.mean) / len(self.mean),) * channels, (sum(self.std) / len(self.std),) * channels

    def view(self, channels: int | None = None, size: int | None = None, mean=None, std=None) -> "Dataset":
        """The same images seen with `channels`, at `size` × `size`, normalised with `mean`/`std` (default:
        this data set's statistics); computed once and cached. The split and the order never change."""

        C, H, W = self.input_shape
        channels, size = channels or C, size or H
        if mean is None or std is None:
            mean, std = self.stats_for(channels)
        target = View(int(channels), int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std))
        if target == self.input_view() and H == W:
            return self
        key = ("view", target)
        if key not in self._device_copies:
            if self.streamed:
                tensors = {f"x_{k}": getattr(self, f"x_{k}").with_view(target) for k in ("train", "val", "test")}
            else:
                src = self.input_view()
                tensors = {f"x_{k}": torch.cat([convert(x[i:i + 1024], src, target) for i in range(0, len(x), 1024)])
                           for k, x in (("train", self.x_train), ("val", self.x_val), ("test", self.x_test))}
            tag = hashlib.sha256(f"{self.fingerprint}|{target}".encode()).hexdigest()[:16]
            self._device_copies[key] = Dataset(
                name=self.name, y_train=self.y_train, y_val=self.y_val, y_test=self.y_test, classes=self.classes,
                mean=target.mean, std=target.std, default_augment=self.default_augment, fingerprint=tag,
                source=self.source, skipped=self.skipped, **tensors)
        return self._device_copies[key]

    def view_for(self, model) -> "Dataset":
        """These images as `model` sees them: its input shape, and its normalisation where it declares one
        (ImageNet's for torchvision and timm models), else this data set's statistics."""
        if len(self.input_shape) != 3:  # rows of features: every model sees them as they are
            return self
        C, H, W = model.kdw_input_shape
        mean, std = getattr(model, "kdw_mean", None), getattr(model, "kdw_std", None)
        return self.view(C, H, mean, std)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to(self, device: torch.device | str) -> "Dataset":
        """The same data set with its tensors on `device` (copied once, then reused; a streamed one stays)."""
        device = torch.device(device)
        if device.type == "cpu" or self.streamed:
            return self
        key = str(device)
        if key not in self._device_copies:
            tensors = {k: getattr(self, k).to(device) for k in
                       ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
            self._device_copies[key] = replace(self, **tensors, _device_copies={})
        return self._device_copies[key]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixels, for showing images."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)


# ---------------------------------------------------------------------------
# loading

_CACHE: dict[tuple, Dataset] = {}  # read-only tensors, shared on purpose: loading FMNIST takes seconds


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
                 val_fraction: float = 0.1, image_size: int | None = None, stream: bool | None = None,
                 allow_outside: bool = False) -> Dataset:
    """Load a data set by name into normalised tensors with a fixed validation split.

    Args:
        name: one of ``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``image-folder``, ``csv``.
        root: where the files are (a folder; the CSV file for ``csv``); required for ``image-folder``, ``csv``.
        download: let torchvision fetch Fashion-MNIST or CIFAR-10 (needs internet).
        val_fraction: the share of the training set held out for validation.
        image_size: the side that ``image-folder`` and ``csv`` images are decoded at (default 32).
        stream: keep decoded images on disk and stream them (True), load them (False), or decide by
            size (None; see `images.memory_budget`). Only ``image-folder`` and ``csv`` stream.
        allow_outside: ``csv`` only: let the manifest list images outside its own folder (refused otherwise).
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    if name in ("image-folder", "csv"):
        image_size = image_size or 32
        if not 4 <= int(image_size) <= 1024:
            raise DataError(f"image size must be between 4 and 1024 pixels, got {image_size}")
    key = (name, str(Path(root).resolve()) if root else None, val_fraction,
           image_size if name in ("image-folder", "csv") else None, stream)
    if key in _CACHE and name not in ("image-folder", "csv"):
        return _CACHE[key]
    if name == "digits":
        x_tr, y_tr, x_te, y_te, classes, source = _raw_digits()
        augment = "none"  # a mirrored 2 is not a 2
    elif name == "fashion-mnist":
        x_tr, y_tr, x_te, y_te, source = _raw_fashion_mnist(root, download)
        classes, augment = FASHION_CLASSES, "flip"
    elif name == "cifar10":
        x_tr, y_tr, x_te, y_te, source = _raw_cifar10(root, download)
        classes, augment = CIFAR10_CLASSES, "flip+crop"
    elif name == "cifar100":
        x_tr, y_tr, x_te, y_te, classes, source = read_cifar100(root)
        x_tr, x_te = x_tr / np.float32(255), x_te / np.float32(255)
        augment = "flip+crop"
    else:
        return _load_decoded(name, root, int(image_size), val_fraction, stream, allow_outside)  # the disk cache is keyed by content
    ds = _assemble(name, x_tr, y_tr, x_te, y_te, classes, augment, val_fraction, source)
    _CACHE[key] = ds
    return ds


def _load_decoded(name: str, root, size: int, val_fraction: float, stream: bool | None,
                  allow_outside: bool = False) -> Dataset:
    """An image folder or a CSV manifest, decoded into the disk cache, in memory or streamed."""

    if not root:
        raise DataError("image-folder needs a folder (--data-dir) holding one subfolder of images per class"
                        if name == "image-folder" else "csv needs the manifest's path (--data-dir manifest.csv)")
    root = Path(root)
    if name == "csv":
        decoded, source = decode(list_csv(root, allow_outside), size), str(root)
        test = decoded.splits
    elif (root / "train").is_dir() and (root / "test").is_dir():
        train_l, test_l = list_folder(root / "train"), list_folder(root / "test")
        if train_l.classes != test_l.classes:
            raise DataError(f"{root}/train and {root}/test must have the same class folders")

        decoded = decode(Listing(train_l.files + test_l.files, train_l.labels + test_l.labels, train_l.classes,
                                 ["train"] * len(train_l.files) + ["test"] * len(test_l.files)), size)
        test, source = decoded.splits, str(root)
    else:
        decoded, source = decode(list_folder(root), size), str(root)
        test = None
    y = decoded.y
    idx = np.arange(len(y))
    if test is None:  # hold out a stratified 20% as the test set
        test_idx, train_idx = _stratified_split(y, 0.2, SPLIT_SEED)
    else:
        test_idx, train_idx = idx[test], idx[~test]
    val_rel, tr_rel = _stratified_split(y[train_idx], val_fraction, SPLIT_SEED)
    val_idx, train_idx = train_idx[val_rel], train_idx[tr_rel]
    n_pixels = len(y) * 3 * size * size
    if stream is None:
        stream = 4 * n_pixels > memory_budget()
    raw = View(3, size, (0.0,) * 3, (1.0,) * 3)
    mean, std = LazyImages(decoded.path, train_idx, raw).pixel_stats()
    view = View(3, size, mean, std)
    if stream:
        xs = {k: LazyImages(decoded.path, i, view) for k, i in (("train", train_idx), ("val", val_idx),
                                                                 ("test", test_idx))}
    else:
        xs = {k: LazyImages(decoded.path, i, view)[:] for k, i in (("train", train_idx), ("val", val_idx),
                                                                   ("test", test_idx))}
    return Dataset(name=name, x_train=xs["train"], y_train=torch.from_numpy(y[train_idx]),
                   x_val=xs["val"], y_val=torch.from_numpy(y[val_idx]), x_test=xs["test"],
                   y_test=torch.from_numpy(y[test_idx]), classes=decoded.classes, mean=mean, std=std,
                   default_augment="flip", fingerprint=hashlib.sha256(f"{decoded.key}|{val_fraction}".encode()
                                                                      ).hexdigest()[:16],
                   source=source, skipped=list(decoded.skipped))


def available_datasets() -> dict[str, str | None]:
    """Each embedded data set mapped to None when it loads here, or to how to get it."""
    out: dict[str, str | None] = {"digits": None}
    try:
        _find_fashion_mnist(None)
        out["fashion-mnist"] = None
    except DataError as e:
        out["fashion-mnist"] = str(e)
    return out


def _assemble(name, x_tr, y_tr, x_te, y_te, classes, augment, val_fraction, source) -> Dataset:
    """uint8/float (N, C, H, W) arrays in [0, 1] -> normalised tensors with a fixed val split."""
    x_tr = np.asarray(x_tr, dtype=np.float32)
    x_te = np.asarray(x_te, dtype=np.float32)
    y_tr = np.asarray(y_tr, dtype=np.int64)
    y_te = np.asarray(y_te, dtype=np.int64)
    val_idx, train_idx = _stratified_split(y_tr, val_fraction, SPLIT_SEED)
    x_train, x_val = x_tr[train_idx], x_tr[val_idx]
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3)) + 1e-8

    def norm(x):
        return torch.from_numpy((x - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()

    digest = hashlib.sha256()
    for arr in (x_tr, y_tr, x_te, y_te, val_idx):
        digest.update(np.ascontiguousarray(arr).tobytes())
    return Dataset(
        name=name,
        x_train=norm(x_train), y_train=torch.from_numpy(y_tr[train_idx]),
        x_val=norm(x_val), y_val=torch.from_numpy(y_tr[val_idx]),
        x_test=norm(x_te), y_test=torch.from_numpy(y_te),
        classes=tuple(classes), mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std), default_augment=augment,
        fingerprint=digest.hexdigest()[:16], source=source)


def fixed_splits(y: np.ndarray, classes, name: str, val_fraction: float = 0.1, test: np.ndarray | None = None,
                 samples: str = "samples") -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: fixed, seeded, stratified indices of labels `y` (a stratified 20% test split, or the
    rows a split column marks `test`; then `val_fraction` of the rest). DataError for a class of fewer than 3
    `samples`, which could not appear in all three."""
    counts = np.bincount(y, minlength=len(classes))
    if (counts < 3).any():
        rare = [classes[i] for i in np.flatnonzero(counts < 3)][:3]
        raise DataError(f"{name}: class{'es' if len(rare) > 1 else ''} {', '.join(map(repr, rare))} "
                        f"{'have' if len(rare) > 1 else 'has'} fewer than 3 {samples}; each class needs at least 3 "
                        "(train, validation and test)")
    if test is None:
        test_idx, rest = _stratified_split(y, 0.2, SPLIT_SEED)
    else:
        idx = np.arange(len(y))
        test_idx, rest = idx[test], idx[~test]
    val_rel, tr_rel = _stratified_split(y[rest], val_fraction, SPLIT_SEED)
    return {"train": rest[tr_rel], "val": rest[val_rel], "test": test_idx}


def _stratified_split(y: np.ndarray, fraction: float, seed: int, count: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (held_out, rest), both sorted: about `fraction` of each class held out, seeded.

    With `count`, exactly that many are held out, shared among classes in proportion to
    their sizes (largest remainders get the leftovers).
    """
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(y, return_counts=True)
    total = count if count is not None else round(fraction * len(y))
    exact = sizes * total / len(y)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: total - quota.sum()]:
        quota[i] += 1
    if count is None:
        quota = np.maximum(quota, 1)  # every class appears in a validation/test split
    held = []
    for c, q in zip(classes, quota):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        held.append(idx[:q])
    held_out = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(y)), held_out)
    return held_out, rest


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, targets) of scikit-learn's digits, read from the file its `load_digits` reads
    (the wheel's datasets/data/digits.csv.gz) without importing scikit-learn: that import alone takes over a
    second, on the app's first page (benchmarks/first_load.py). `load_digits` where the file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        f = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if f.is_file():
            data = np.loadtxt(f, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _raw_digits():
    images, target = _digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = target.astype(np.int64)
    test_idx, train_idx = _stratified_split(y, 0.2, SPLIT_SEED)  # digits has no official test set
    classes = tuple(str(i) for i in range(10))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx], classes, "sklearn.datasets.load_digits"


# ---------------------------------------------------------------------------
# label budget

def label_mask(y: torch.Tensor, labels: float | int | None, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Boolean mask of the training labels a run may see.

    `labels` is a count (an int, 1 meaning one label), a fraction in (0, 1] (a float), or None for
    all. The chosen samples are stratified by class and seeded, so scratch and KD runs see the
    same ones.
    """
    n = len(y)
    if labels is None:
        return torch.ones(n, dtype=torch.bool)
    if isinstance(labels, float) and not 0 < labels <= 1:
        raise ValueError(f"a fraction of labels must be in (0, 1], got {labels}")
    count = max(1, round(labels * n)) if isinstance(labels, float) else int(labels)
    if count < 1 or count > n:
        raise ValueError(f"labels must be between 1 and {n} (or a fraction in (0, 1]), got {labels}")
    held, _ = _stratified_split(y.cpu().numpy(), count / n, seed, count=count)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(held)] = True
    return mask


# ---------------------------------------------------------------------------
# batches and augmentation (whole batches, tensor ops only)


