"""Data sets, torchvision loading from gzipped IDX files, binarisation, batches."""

import gzip
import os
import struct

import pytest
import torch

from pyrovae.components.data import DATASETS, DeviceBatches, binarize, check_images, load_dataset


def test_digits_is_bundled_scaled_and_split_by_a_fixed_seed():
    data = load_dataset("digits")
    assert data.train_x.shape == (1497, 1, 8, 8) and data.test_x.shape == (300, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.train_x.min() == 0 and data.train_x.max() == 1
    again = load_dataset("digits")
    assert torch.equal(data.test_x, again.test_x) and torch.equal(data.test_y, again.test_y)
    assert set(data.test_y.tolist()) == set(range(10))


def write_idx(path, array: torch.Tensor):
    """Write a uint8 tensor as a gzipped IDX file (torchvision's MNIST raw format)."""
    header = struct.pack(">I", 0x0800 + array.dim()) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.to(torch.uint8).numpy().tobytes())


def write_fake_mnist(root, folder="MNIST", n_train=12, n_test=5):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    images = {split: torch.randint(0, 256, (n, 28, 28), generator=generator)
              for split, n in (("train", n_train), ("t10k", n_test))}
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", torch.arange(n) % 10)
    return raw, images


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                         ("kmnist", "KMNIST")])
def test_torchvision_reads_gzipped_idx_files(tmp_path, name, folder):
    raw, images = write_fake_mnist(tmp_path, folder)
    data = load_dataset(name, tmp_path)
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    torch.testing.assert_close(data.train_x[:, 0] * 255, images["train"].float())
    assert data.test_y.tolist() == [0, 1, 2, 3, 4]
    assert (raw / "train-images-idx3-ubyte").is_file()  # decompressed once, beside the .gz


def test_read_only_data_dir_decompresses_into_the_cache(tmp_path, monkeypatch):
    raw, _ = write_fake_mnist(tmp_path / "ro")
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(
        str(tmp_path / "ro")) and mode == os.W_OK else real_access(path, mode))
    data = load_dataset("mnist", tmp_path / "ro")
    assert data.train_x.shape[0] == 12
    assert (tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert not (raw / "train-images-idx3-ubyte").exists()


def test_missing_data_set_names_the_files_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw/train-images-idx3-ubyte\.gz.*"
                       r"--download"):
        load_dataset("mnist", tmp_path)


def test_real_mnist_from_shared_data(shared_data_dir):
    root = shared_data_dir
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw (set PYROVAE_SHARED_DATA)")
    data = load_dataset("mnist", root)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert 0.12 < data.train_x.mean() < 0.14  # MNIST's mean grey level is 0.1307


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known: digits"):
        load_dataset("svhn")
    assert {"digits", "mnist", "fashion-mnist", "kmnist"} <= set(DATASETS.names())


@pytest.mark.parametrize("bad,error,match", [
    (torch.tensor([[[[float("nan")]]]]), ValueError, "1 NaN or infinite values"),
    (torch.zeros(0, 1, 2, 2), ValueError, "empty"),
    (torch.zeros(3, 4), ValueError, r"shape \(N, C, H, W\)"),
    (torch.zeros(3, 1, 2, 2, dtype=torch.uint8), TypeError, "floating-point"),
])
def test_bad_images_are_refused(bad, error, match):
    with pytest.raises(error, match=match):
        check_images(bad, "images")


def test_binarize_modes(tiny_images):
    grey, _ = tiny_images
    static = binarize(grey, "static", seed=3)
    assert set(static.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(static, binarize(grey, "static", seed=3))
    assert binarize(grey, "none") is grey and binarize(grey, "dynamic") is grey
    with pytest.raises(ValueError, match="binarize must be one of none, static, dynamic"):
        binarize(grey, "threshold")


def test_device_batches_static_shapes_and_fresh_orders(tiny_images):
    grey, _ = tiny_images
    batches = DeviceBatches(grey, 16)
    first, second = list(batches), list(batches)
    assert len(batches) == 2 and all(b.shape == (16, 1, 4, 4) for b in first + second)
    assert not torch.equal(torch.cat(first), torch.cat(second))
    dynamic = torch.cat(list(DeviceBatches(grey, 8, dynamic_binarize=True)))
    assert set(dynamic.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="batch_size 41 is larger than the data set"):
        DeviceBatches(grey, 41)
