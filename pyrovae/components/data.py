"""Data sets as tensors, binarisation, and a device-resident batch iterator.

Every data set is returned as a :class:`Dataset` of float32 images in [0, 1] with shape
``(N, C, H, W)`` (C = 1, grey, or 3, colour) and int64 labels of shape ``(N,)``:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16 scaled
  to [0, 1]), split 1,497 / 300 by a fixed seed. The embedded default: nothing is downloaded.
- ``mnist``, ``fashion-mnist``, ``kmnist``: 28x28 images through torchvision, read from
  ``data_dir`` (default ``$PYROVAE_DATA`` or ``~/.cache/pyrovae``) in torchvision's layout
  (``MNIST/raw/...``). Gzipped raw files (``*.gz``) are decompressed once with torchvision's
  own utility, beside them or, where that folder is read-only, under the default cache.
- ``photo-patches``: 16x16 colour patches of scikit-learn's two bundled sample photographs
  (8,216 patches, ``(N, 3, 16, 16)``, 8-bit values; no download), for colour models.
- ``folder:PATH`` and ``array:FILE``: the user's own images, grey or colour, ``(N, C, H, W)``
  (:mod:`pyrovae.components.files`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyrovae.components.files import is_file_dataset, load_file_dataset, split
from pyrovae.components.idx_files import decompress_idx, is_valid_idx
from pyrovae.components.registry import Registry
from pyrovae.components.validation import check_int, check_one_of

DATASETS: Registry = Registry("dataset")
BINARIZE_MODES = ("none", "static", "dynamic")
DIGITS_TEST_SIZE = 300
SPLIT_SEED = 0  # the digits split is fixed, whatever the run's seed, so test sets compare


@dataclass
class Dataset:
    """Images in [0, 1] and their labels.

    Attributes:
        name: registry name of the data set.
        train_x: float32, shape ``(N_train, C, H, W)``.
        train_y: int64, shape ``(N_train,)``.
        test_x: float32, shape ``(N_test, C, H, W)``.
        test_y: int64, shape ``(N_test,)``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one datum, e.g. ``(1, 28, 28)``."""
        return tuple(self.train_x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on ``device`` (moved once; batches are then cut on the device)."""
        return Dataset(
            self.name,
            *(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)),
        )


def default_data_dir() -> Path:
    """``$PYROVAE_DATA`` if set, else ``~/.cache/pyrovae``."""
    return Path(os.environ.get("PYROVAE_DATA") or Path.home() / ".cache" / "pyrovae")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
    test_fraction: float = 0.1, layout: str = "auto",
) -> Dataset:
    """Load the registered data set ``name`` (see the module docstring for the choices), or
    the user's files ``folder:PATH`` / ``array:FILE`` (:mod:`pyrovae.components.files`:
    ``test_fraction`` held out when they give no test set; ``layout`` of an array)."""
    if is_file_dataset(name):
        dataset = Dataset(name, *load_file_dataset(name, test_fraction, layout))
    else:
        loader = DATASETS.get(name)
        dataset = loader(Path(data_dir) if data_dir else default_data_dir(), download)
    check_images(dataset.train_x, f"dataset {name!r} training images")
    check_images(dataset.test_x, f"dataset {name!r} test images")
    return dataset


def check_images(x: torch.Tensor, what: str = "data") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``x`` is a non-empty finite float image batch.

    Args:
        x: expected float32/float64 of shape ``(N, C, H, W)`` with N >= 1.
        what: how the message names the data.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(
            f"{what} must have shape (N, C, H, W), got {tuple(x.shape)} ({x.dim()} dims)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)})")
    # one reduction pass; a sum that is not finite may also come from large finite values,
    # so only then count the bad entries exactly
    if torch.isfinite(x.sum()).item():
        return
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(f"{what} contain {bad} NaN or infinite values; clean the data first")


def check_tensor_data(x: torch.Tensor, what: str = "data") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``x`` is a non-empty tensor ``(N, ...)``
    whose values, when floating, are all finite (data of any shape, for a user's model)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{what} must hold one or more data along dim 0, got shape "
                         f"{tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x.sum()).item():
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise ValueError(f"{what} contain {bad} NaN or infinite values; clean the data "
                             "first")


@DATASETS.register("digits")
def _load_digits(data_dir: Path, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def _torchvision_loader(registry_name: str, class_name: str):
    def load(data_dir: Path, download: bool) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        root = _prepare_torchvision_root(cls, data_dir, download, registry_name)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
        return Dataset(
            registry_name,
            train.data.unsqueeze(1).float() / 255.0,
            train.targets.long(),
            test.data.unsqueeze(1).float() / 255.0,
            test.targets.long(),
        )

    return load


PATCH_SIZE, PATCH_STRIDE = 16, 8


@DATASETS.register("photo-patches")
def _load_photo_patches(data_dir: Path, download: bool) -> Dataset:
    """16x16 RGB patches (stride 8) cut from scikit-learn's two bundled sample photographs
    (``load_sample_images``: china.jpg, flower.jpg, 427x640; no download), 8-bit values
    scaled by 1/255: 8,216 patches, ``(N, 3, 16, 16)``, labelled by photograph (0, 1), split
    by a fixed seed with 10% for testing."""
    from sklearn.datasets import load_sample_images

    photos = torch.as_tensor(np.stack(load_sample_images().images)).permute(0, 3, 1, 2)
    patches = photos.unfold(2, PATCH_SIZE, PATCH_STRIDE).unfold(3, PATCH_SIZE, PATCH_STRIDE)
    # (2, 3, rows, cols, 16, 16) -> (2 * rows * cols, 3, 16, 16)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, PATCH_SIZE, PATCH_SIZE)
    per_photo = len(patches) // len(photos)
    labels = torch.arange(len(photos)).repeat_interleave(per_photo)
    x = patches.float() / 255.0
    return Dataset("photo-patches", *split(x, labels, 0.1, "photo-patches"))


def _prepare_torchvision_root(cls, data_dir: Path, download: bool, name: str) -> Path:
    """Return a root where torchvision finds ``cls``'s decompressed raw files.

    Decompresses ``*.gz`` raw files once, atomically and checked
    (:mod:`pyrovae.components.idx_files`: a damaged archive is a ``ValueError`` naming it, and
    an empty or cut-off decompressed file counts as missing); when ``data_dir`` is
    read-only, into the same layout under :func:`default_data_dir`.
    """
    files = [filename for filename, _md5 in cls.resources]  # e.g. train-images-idx3-ubyte.gz
    raw = data_dir / cls.__name__ / "raw"

    def missing(folder: Path) -> list[str]:
        return [f for f in files if not is_valid_idx(folder / f.removesuffix(".gz"))]

    if not missing(raw) or download:
        return data_dir
    gz_missing = [f for f in files if not (raw / f).is_file()]
    if [f for f in missing(raw) if f in gz_missing]:
        looked = ", ".join(str(raw / f) for f in files)
        raise FileNotFoundError(
            f"dataset {name!r} not found: looked for {looked} (gzipped or not); "
            f"pass --download to fetch it, or --data-dir pointing at a folder holding "
            f"{cls.__name__}/raw/"
        )
    root = data_dir if os.access(raw, os.W_OK) else default_data_dir()
    target = root / cls.__name__ / "raw"
    if root != data_dir and not missing(target):
        return root
    target.mkdir(parents=True, exist_ok=True)
    for f in missing(target):
        decompress_idx(raw / f, target / f.removesuffix(".gz"))
    return root


DATASETS.register("mnist", _torchvision_loader("mnist", "MNIST"))
DATASETS.register("fashion-mnist", _torchvision_loader("fashion-mnist", "FashionMNIST"))
DATASETS.register("kmnist", _torchvision_loader("kmnist", "KMNIST"))


def binarize(x: torch.Tensor, mode: str, seed: int = 0) -> torch.Tensor:
    """Binarise images ahead of training.

    ``none`` returns ``x``; ``static`` samples each pixel once from Bernoulli(grey level) with
    a fixed ``seed`` (the same binary data set every run); ``dynamic`` also returns ``x``
    unchanged, since it is resampled per batch by :class:`DeviceBatches`.
    """
    check_binarize_mode(mode)
    if mode != "static":
        return x
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


LEVELS = 256  # values of 8-bit data; dequantised data cover [0, 1) in cells of 1/256


def dequantize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data scaled to [0, 1] (``k / 255``): ``(k + u) / 256``
    with u ~ U[0, 1) per value, so the values fill [0, 1) and a continuous density p on it
    bounds the 8-bit probability: log P(k) >= E_u[log p((k + u) / 256)] - D log 256 (Theis et
    al. 2016). ``seed``: a fixed draw (the test set); ``None``: the global RNG (each batch)."""
    levels = torch.round(x * (LEVELS - 1))
    if seed is None:
        noise = torch.rand_like(x)
    else:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # u below 1 - 2^-12: in float32, 255 + u would round up to 256 for u > 1 - 2^-17
    return (levels + noise.clamp_(max=1 - 2 ** -12)) / LEVELS


def check_binarize_mode(mode: str) -> None:
    check_one_of(mode, "binarize", BINARIZE_MODES)


def check_batch_size(batch_size: int, n: int) -> None:
    """Refuse a batch size that is not a positive integer or exceeds the ``n`` data."""
    check_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} training "
                         f"images); use at most {n}")


class DeviceBatches:
    """Mini-batches cut from tensors that live on the device, in a fresh order each epoch.

    The order is a ``torch.randperm`` on the data's device drawn from the global torch RNG
    (so seeding torch and saving its RNG state makes the order reproducible). The last partial
    batch is dropped so that every batch has the static shape ``(batch_size, *x.shape[1:])``
    (a requirement of CUDA-graph capture); each epoch therefore sees
    ``len(self) * batch_size`` data, and the dropped ones differ from epoch to epoch.

    Args:
        x: data on its final device, shape ``(N, ...)``; or a tuple of such tensors (a
            model's arguments, cut with the same order), each batch then a tuple.
        batch_size: at most N.
        dynamic_binarize: resample each batch of ``x`` (the first tensor of a tuple) from
            Bernoulli(x) as it is drawn.
        dequantize: dequantise each batch of ``x`` afresh (:func:`dequantize`; 8-bit data).
    """

    def __init__(self, x, batch_size: int, dynamic_binarize: bool = False,
                 dequantize: bool = False):
        self.tensors = (x,) if isinstance(x, torch.Tensor) else tuple(x)
        self.single = isinstance(x, torch.Tensor)
        check_batch_size(batch_size, len(self.tensors[0]))
        self.batch_size = batch_size
        self.dynamic_binarize = dynamic_binarize
        self.dequantize = dequantize

    def __len__(self) -> int:
        return len(self.tensors[0]) // self.batch_size

    def __iter__(self):
        first = self.tensors[0]
        order = torch.randperm(len(first), device=first.device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = [t[index] for t in self.tensors]
            if self.dynamic_binarize:
                batch[0] = torch.bernoulli(batch[0])
            if self.dequantize:
                batch[0] = dequantize(batch[0])
            yield batch[0] if self.single else tuple(batch)
