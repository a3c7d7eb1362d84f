"""A folder of image files as tensors (``--dataset folder:PATH``; see
:mod:`pyrovae.components.files` for the rules).

Images are read with Pillow, one at a time, into one preallocated uint8 array, then scaled to
float32 in [0, 1]: ``(N, C, H, W)``, C = 1 (grey) or 3 (RGB), as the first file is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA"}
COLOUR_MODES = {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}  # 8 bits a channel


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted by path."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def labelled_files(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``folder`` with labels: the index of the sub-folder directly
    under ``folder`` that holds each (sorted names), 0 for files at the top; and the names."""
    files = image_files(folder)
    if not files:
        raise ValueError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    parts = [f.relative_to(folder).parts for f in files]
    classes = sorted({p[0] for p in parts if len(p) > 1})
    top = [f for f, p in zip(files, parts) if len(p) == 1]
    if classes and top:
        raise ValueError(f"{folder} has images both at the top ({top[0].name}, ...) and in "
                         f"label folders ({', '.join(classes)}): put every image in a label "
                         "folder, or all of them at the top")
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[p[0]] if len(p) > 1 else 0 for p in parts]
    return files, labels, classes


def _read(path: Path, mode: str | None):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            found = image.mode
            pixels = None
            if found in GREY_MODES | COLOUR_MODES:
                mode = mode or ("L" if found in GREY_MODES else "RGB")
                pixels = np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from None
    if pixels is None:
        raise ValueError(f"{path} is a {found} image (16-bit or floating point); only 8-bit "
                         "grey or colour images are read: save it with 8 bits a channel")
    return pixels, mode


def read_images(files: list[Path], mode: str | None = None) -> tuple[torch.Tensor, str]:
    """``(images (N, C, H, W) float32 in [0, 1], the Pillow mode used)``; the first file sets
    the mode (unless given) and the size, which every other file must have."""
    first, mode = _read(files[0], mode)
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, path in enumerate(files[1:], start=1):
        pixels, _ = _read(path, mode)
        if pixels.shape != first.shape:
            raise ValueError(f"{path} is {_size(pixels)}, but {files[0]} (the first image) is "
                             f"{_size(first)}: every image must have the same size")
        out[i] = pixels
    images = torch.from_numpy(out)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.float().div_(255.0).contiguous(), mode


def _size(pixels: np.ndarray) -> str:
    return f"{pixels.shape[1]}x{pixels.shape[0]} pixels"


def load_folder(folder: Path):
    """``(x, y, test_x or None, test_y or None)`` from an image folder: ``train/`` and
    ``test/`` sub-folders are the split when both exist."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train_files, train_labels, classes = labelled_files(folder / "train")
        test_files, test_labels, test_classes = labelled_files(folder / "test")
        if test_classes != classes:
            raise ValueError(f"{folder}: test/ has the label folders {test_classes}, train/ "
                             f"{classes}; they must be the same")
        x, mode = read_images(train_files)
        test_x, _ = read_images(test_files, mode)
        if test_x.shape[1:] != x.shape[1:]:
            raise ValueError(f"{test_files[0]} is {test_x.shape[-1]}x{test_x.shape[-2]} "
                             f"pixels, but {train_files[0]} is {x.shape[-1]}x{x.shape[-2]}")
        return x, torch.tensor(train_labels), test_x, torch.tensor(test_labels)
    files, file_labels, _ = labelled_files(folder)
    x, _ = read_images(files)
    return x, torch.tensor(file_labels), None, None
