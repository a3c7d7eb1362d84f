"""Your own images as a data set: ``folder:PATH`` (image files) or ``array:FILE`` (NumPy).

Both become a :class:`~pyrovae.components.data.Dataset` of float32 images in [0, 1], shape
``(N, C, H, W)``, like the built-in data sets:

- ``folder:PATH``: every image file under PATH (``.png``, ``.jpg``, ``.bmp``, ``.gif``,
  ``.tif``, ``.webp``), read with Pillow, sorted by path. Sub-folders directly under PATH are
  the labels (class ``i`` = the i-th folder name, sorted); files at the top level get label 0.
  With sub-folders ``train/`` and ``test/`` those are the split (each with its own label
  folders). The first file decides the channels: grey (1) or colour (3, RGB; an alpha
  channel is dropped); the others are converted to it. All must have the first one's size,
  else a ``ValueError`` names the first that differs.
- ``array:FILE``: a ``.npy`` array of images, or an ``.npz`` with ``x`` (and optionally
  ``y`` labels, ``test_x``, ``test_y``). Shapes ``(N, H, W)``, ``(N, C, H, W)`` or
  ``(N, H, W, C)`` with C in {1, 3, 4}; the layout is read from the shape (``layout="auto"``)
  or given (``"nchw"``, ``"nhwc"``) where the shape does not say. uint8 (or other integer)
  values 0..255 are scaled by 1/255; floats must already be in [0, 1]. A ``.npy`` is
  memory-mapped and converted to float32 once (one copy, not two).

Without a given test set, a fixed-seed split keeps ``test_fraction`` of the data for testing
(at least one datum on each side): the split depends only on the data and the fraction, so
runs with different seeds share their test set. Every error names the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from pyrovae.components.image_folder import load_folder
from pyrovae.components.validation import check_one_of

PREFIXES = ("folder:", "array:")
LAYOUTS = ("auto", "nchw", "nhwc")
SPLIT_SEED = 0
CHANNELS = (1, 3, 4)


def is_file_dataset(name: object) -> bool:
    """Whether ``name`` is ``folder:PATH`` or ``array:FILE``."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def check_file_dataset_name(name: str) -> None:
    """``ValueError`` unless ``name`` is ``folder:PATH`` or ``array:FILE.npy|.npz`` in form
    (whether the path exists is checked when the data are loaded, so a run folder whose data
    moved still loads its config)."""
    kind, _, path = name.partition(":")
    if not path:
        raise ValueError(f"--dataset {name}: give a path after {kind}:")
    if kind == "array" and Path(path).suffix not in (".npy", ".npz"):
        raise ValueError(f"--dataset {name}: {path} must be a .npy or .npz file")


def file_dataset_path(name: str) -> Path:
    """The path of ``folder:PATH`` / ``array:FILE``; ``ValueError`` if it does not exist."""
    kind, _, path = name.partition(":")
    path = Path(path).expanduser()
    exists = path.is_dir() if kind == "folder" else path.is_file()
    if not path.name or not exists:
        what = "a folder of images" if kind == "folder" else "a .npy or .npz file"
        raise ValueError(f"--dataset {name}: {path} is not {what}")
    if kind == "array" and path.suffix not in (".npy", ".npz"):
        raise ValueError(f"--dataset {name}: {path} must be a .npy or .npz file")
    return path


def split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, what: str):
    """``(train_x, train_y, test_x, test_y)``: a fixed-seed random ``test_fraction`` held out."""
    n = len(x)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise ValueError(f"{what} holds {n} image(s): a train/test split needs at least 2")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def as_images(array: np.ndarray, layout: str, what: str) -> torch.Tensor:
    """An array of images as float32 ``(N, C, H, W)`` in [0, 1] (see the module docstring)."""
    check_one_of(layout, "layout", LAYOUTS)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        nchw, nhwc = array.shape[1] in CHANNELS, array.shape[3] in CHANNELS
        if layout == "auto":
            if nchw == nhwc:
                raise ValueError(f"{what}: cannot tell the layout of shape {array.shape} "
                                 "(channels first or last?); pass --layout nchw or nhwc")
            layout = "nchw" if nchw else "nhwc"
        if layout == "nhwc":
            array = array.transpose(0, 3, 1, 2)
        if array.shape[1] not in CHANNELS:
            raise ValueError(f"{what}: {array.shape[1]} channels; expected 1, 3 or 4 "
                             f"(shape {array.shape} read as {layout})")
    else:
        raise ValueError(f"{what}: shape {array.shape}; expected (N, H, W), (N, C, H, W) or "
                         "(N, H, W, C)")
    if array.shape[0] == 0:
        raise ValueError(f"{what} holds no images (shape {array.shape})")
    if array.dtype == np.bool_:  # binary images: False/True are 0 and 1
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).contiguous()
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"{what}: integer values must be 0..255 (8-bit); found "
                             f"{low}..{high}")
        out = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return out.div_(255.0).contiguous()
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: dtype {array.dtype}; expected integers 0..255 or floats "
                         "in [0, 1]")
    out = torch.from_numpy(np.asarray(array, dtype=np.float32))
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise ValueError(f"{what} contain {bad} NaN or infinite values; clean the data first")
    low, high = float(out.min()), float(out.max())
    if low < 0 or high > 1:
        raise ValueError(f"{what}: float values must be in [0, 1]; found [{low:.4g}, "
                         f"{high:.4g}] (scale 8-bit data by 1/255)")
    return out.contiguous()


def labels(values, n: int, what: str) -> torch.Tensor:
    """Integer labels ``(n,)`` (zeros when ``values`` is None)."""
    if values is None:
        return torch.zeros(n, dtype=torch.int64)
    values = np.asarray(values)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{what}: labels must be {n} integers, got shape {values.shape} of "
                         f"{values.dtype}")
    return torch.from_numpy(values.astype(np.int64))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (``{"x": memory-mapped array}``) or ``.npz`` file, read (no
    pickles); ``ValueError`` naming the file when it is not a readable NumPy file."""
    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, mmap_mode="r")}
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable NumPy file: {error}") from None
    if "x" not in arrays:
        raise ValueError(f"{path}: an .npz needs an array 'x' (and optionally 'y', 'test_x', "
                         f"'test_y'); found {', '.join(arrays) or 'none'}")
    return arrays


def load_array(path: Path, layout: str = "auto"):
    """``(x, y, test_x or None, test_y or None)`` from a ``.npy`` or ``.npz`` file."""
    arrays = _read_arrays(path)
    name = str(path) if path.suffix == ".npy" else f"{path} ['x']"
    x = as_images(arrays["x"], layout, name)
    y = labels(arrays.get("y"), len(x), f"{path} ['y']")
    if "test_x" not in arrays:
        return x, y, None, None
    test_x = as_images(arrays["test_x"], layout, f"{path} ['test_x']")
    test_y = labels(arrays.get("test_y"), len(test_x), f"{path} ['test_y']")
    if test_x.shape[1:] != x.shape[1:]:
        raise ValueError(f"{path}: 'test_x' images have shape {tuple(test_x.shape[1:])}, "
                         f"'x' images {tuple(x.shape[1:])}")
    return x, y, test_x, test_y


def load_file_dataset(name: str, test_fraction: float = 0.1, layout: str = "auto"):
    """``(train_x, train_y, test_x, test_y)`` of ``folder:PATH`` or ``array:FILE``; the
    fixed-seed split of ``test_fraction`` when the files give no test set."""
    path = file_dataset_path(name)
    x, y, test_x, test_y = load_folder(path) if name.startswith("folder:") \
        else load_array(path, layout)
    if y is None:
        y = torch.zeros(len(x), dtype=torch.int64)
    if test_x is None:
        return split(x, y, test_fraction, str(path))
    return x, y, test_x, test_y
