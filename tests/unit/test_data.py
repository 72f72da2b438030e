"""Data sets load into tensors with fixed splits; loaders and augmentation work on whole batches."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from workbench.data import datasets as data
from workbench.data import readers
from workbench.data.datasets import label_mask, load_dataset
from workbench.data.loaders import BatchLoader
from workbench.data.readers import read_idx
from workbench.data.transforms import batch_crop, batch_flip_lr
from workbench.errors import DataError


def test_digits_loads_normalised_with_fixed_disjoint_splits(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_val) + len(digits.x_test) == 1797
    assert abs(digits.x_train.mean().item()) < 1e-4 and abs(digits.x_train.std().item() - 1) < 0.05
    again = data._assemble("digits", *data._raw_digits()[:4], tuple("0123456789"), "none", 0.1, "")
    assert torch.equal(again.y_val, digits.y_val)  # the split never depends on anything but SPLIT_SEED
    assert digits.fingerprint == again.fingerprint


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    d = tmp_path / "fmnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (200, 28, 28)))
    _write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(200) % 10)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(50) % 10)
    return d


def test_fashion_mnist_reads_idx_files_from_kdw_data_dir(fake_fashion, monkeypatch):
    monkeypatch.setenv("KDW_DATA_DIR", str(fake_fashion))
    data._CACHE.clear()
    ds = load_dataset("fashion-mnist")
    assert ds.input_shape == (1, 28, 28) and ds.classes[0] == "T-shirt/top"
    assert len(ds.x_train) == 180 and len(ds.x_val) == 20 and len(ds.x_test) == 50
    assert ds.default_augment == "flip"
    data._CACHE.clear()


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"hello world, not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)


def test_missing_fashion_mnist_names_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(readers, "fashion_mnist_dirs", lambda root=None: [tmp_path / "nowhere"])
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        readers._raw_fashion_mnist(None, download=False)


def test_cifar10_python_batches_load_from_a_local_folder(tmp_path, monkeypatch):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 40), ("data_batch_2", 40), ("test_batch", 20)]:
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    data._CACHE.clear()
    ds = load_dataset("cifar10", tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) + len(ds.x_val) == 80 and len(ds.x_test) == 20
    assert ds.default_augment == "flip+crop"
    data._CACHE.clear()


def test_cifar_loader_refuses_pickles_with_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DataError, match="refusing to unpickle"):
        readers._load_cifar_batch(p)


def test_image_folder_loads_class_subfolders(tmp_path):
    from PIL import Image

    for cls, color in [("cats", (255, 0, 0)), ("dogs", (0, 0, 255))]:
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (20, 24), color).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset("image-folder", tmp_path, image_size=16)
    assert ds.classes == ("cats", "dogs") and ds.input_shape == (3, 16, 16)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 20


def test_image_folder_without_a_folder_says_so():
    with pytest.raises(DataError, match="needs a folder"):
        load_dataset("image-folder")


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="unknown data set 'mnist2'"):
        load_dataset("mnist2")


def test_batch_loader_covers_each_sample_once_per_epoch():
    x = torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1)
    y = torch.arange(100)
    loader = BatchLoader(x, y, 32, drop_last=False, seed=0)
    seen = torch.cat([idx for _, _, idx, _ in loader])
    assert len(loader) == 4 and sorted(seen.tolist()) == list(range(100))


def test_batch_loader_with_steps_cycles_a_subset():
    x = torch.zeros(100, 1, 2, 2)
    y = torch.arange(100)
    loader = BatchLoader(x, y, 8, indices=torch.tensor([3, 7, 11]), steps=5)
    batches = list(loader)
    assert len(batches) == 5 and all(len(b[2]) == 3 for b in batches)
    assert set(torch.cat([b[2] for b in batches]).tolist()) == {3, 7, 11}


def test_batch_flip_lr_mirrors_only_flagged_samples():
    x = torch.arange(8.0).view(2, 1, 1, 4)
    out = batch_flip_lr(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [3, 2, 1, 0] and out[1, 0, 0].tolist() == [4, 5, 6, 7]


def test_batch_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randn(16, 2, 6, 6)
    out = batch_crop(x, 2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(16):  # each crop equals some window of its own padded image
        assert any(torch.equal(out[b], padded[b, :, i:i + 6, j:j + 6]) for i in range(5) for j in range(5))


def test_label_mask_is_stratified_and_seeded(digits):
    m = label_mask(digits.y_train, 100, seed=3)
    assert m.sum() == 100
    counts = torch.bincount(digits.y_train[m], minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    assert torch.equal(m, label_mask(digits.y_train, 100, seed=3))
    assert not torch.equal(m, label_mask(digits.y_train, 100, seed=4))
    assert label_mask(digits.y_train, 0.5).sum() == round(0.5 * len(digits.y_train))
    with pytest.raises(ValueError, match="labels must be"):
        label_mask(digits.y_train, 10**6)


def test_digits_are_read_without_importing_scikit_learn_and_equal_load_digits():
    """The first page reads digits from the wheel's own file (scikit-learn's import alone takes over a second)."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from workbench.data.datasets import _digits_arrays

    images, target = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
    code = ("import sys; from workbench.data.datasets import load_dataset; load_dataset('digits'); "
            "print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
