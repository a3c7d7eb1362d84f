"""Conditioning tasks of the conditional VAE: which part of a datum is the input X, which
the output Y that P(Y|X) models.

A :class:`Condition` turns a batch of images ``(N, C, H, W)`` and labels ``(N,)`` into

    x: ``(N, x_dim)``, the conditioning input X (never a sample site, never scored);
    y: ``(N, y_dim)``, the modelled values Y (the pixels P(Y|z, X) scores, and only those);

and puts generated Y back into images (:meth:`Condition.complete`), the observed pixels
copied unchanged. Registered in :data:`CONDITIONS`:

- ``quadrant``: X is the top-left quadrant of the image, Y the other three (the task of
  Doersch's figure and of Pyro's CVAE example, there with one quadrant given);
- ``half``: X the left half (columns ``< W // 2``), Y the right half;
- ``label``: X the one-hot class (``classes`` values), Y the whole image.

For the training loop, ``x`` and ``y`` travel as one tensor (:func:`pack`): the
concatenation ``[x, y]`` shaped as a one-row image ``(N, 1, 1, x_dim + y_dim)``, so the
trainer's batching, checks, dynamic binarisation (a one-hot label is its own Bernoulli draw)
and evaluation take it unchanged. :func:`unpack` splits it back by slicing (no host sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyrovae.components.networks import check_sizes
from pyrovae.components.registry import Registry
from pyrovae.components.validation import check_int

CONDITIONS: Registry = Registry("condition")
MISSING_GREY = 0.5  # how figures show the pixels an input does not give


class Condition:
    """Base class: a split of each datum into the input X and the modelled output Y.

    Args:
        image_shape: shape of one image, ``(C, H, W)``.
        classes: number of classes of the labels (used by ``label``).

    Attributes:
        x_dim, y_dim: sizes of X and Y per datum.
    """

    x_dim: int
    y_dim: int

    def __init__(self, image_shape: Sequence[int], classes: int = 10):
        self.image_shape = check_sizes(image_shape, "image_shape")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        self.classes = check_int(classes, "classes")

    @property
    def name(self) -> str:
        return next((n for n in CONDITIONS if CONDITIONS.get(n) is type(self)),
                    type(self).__name__)

    def split(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """``(x, y)`` of shapes ``(N, x_dim)``, ``(N, y_dim)`` from images ``(N, C, H, W)``
        and labels ``(N,)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def complete(self, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images with their Y part replaced by ``y``: ``images`` ``(N, C, H, W)`` (the
        observed pixels are copied unchanged), ``y`` ``(..., N, y_dim)``; returns
        ``(..., N, C, H, W)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def show_input(self, images: torch.Tensor) -> torch.Tensor:
        """X as a picture, ``(N, C, H, W)``: the observed pixels, the others grey."""
        raise NotImplementedError  # pragma: no cover - abstract

    def image_index(self) -> torch.Tensor:
        """``(C * H * W,)`` long: where each value of the flattened image is in ``[x, y]``
        (``x_dim + y_dim`` values), so ``cat([x, y], -1)[..., image_index]`` is the image
        (for ``label``, Y alone is the image)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def modelled_positions(self) -> torch.Tensor:
        """``(y_dim,)`` long: the flat image positions of Y's values, in Y's order."""
        raise NotImplementedError  # pragma: no cover - abstract

    def check(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """``ValueError`` unless ``images`` are ``(N, *image_shape)`` with ``N`` labels."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"condition {self.name!r} was built for images of shape "
                             f"{self.image_shape}; got {tuple(images.shape[1:])}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"need one label per image: {len(images)} images, labels of "
                             f"shape {tuple(labels.shape)}")


class PixelCondition(Condition):
    """X: the pixels where :meth:`observed` is True; Y: all the others (flattened order)."""

    def __init__(self, image_shape: Sequence[int], classes: int = 10):
        super().__init__(image_shape, classes)
        observed = self.observed().expand(self.image_shape).reshape(-1)
        self.observed_index = observed.nonzero().squeeze(1)     # (x_dim,) flat pixel indices
        self.modelled_index = (~observed).nonzero().squeeze(1)  # (y_dim,)
        self.x_dim, self.y_dim = len(self.observed_index), len(self.modelled_index)
        if not self.x_dim or not self.y_dim:
            raise ValueError(f"condition {self.name!r} leaves nothing to observe or to model "
                             f"in images of shape {self.image_shape}")

    def observed(self) -> torch.Tensor:
        """Boolean ``(H, W)``: True where the pixel belongs to X."""
        raise NotImplementedError  # pragma: no cover - abstract

    def split(self, images, labels):
        self.check(images, labels)
        flat = images.reshape(len(images), -1)
        return flat[:, self.observed_index.to(flat.device)], \
            flat[:, self.modelled_index.to(flat.device)]

    def complete(self, images, y):
        flat = images.reshape(len(images), -1)
        flat = flat.expand(y.shape[:-1] + flat.shape[-1:]).clone()
        flat[..., self.modelled_index.to(flat.device)] = y.to(flat.dtype)
        return flat.reshape(y.shape[:-1] + self.image_shape)

    def show_input(self, images):
        flat = images.reshape(len(images), -1).clone()
        flat[:, self.modelled_index.to(flat.device)] = MISSING_GREY
        return flat.reshape(images.shape)

    def image_index(self):
        return torch.cat([self.observed_index, self.modelled_index]).argsort()

    def modelled_positions(self):
        return self.modelled_index.clone()


@CONDITIONS.register("quadrant")
class QuadrantCondition(PixelCondition):
    """X: the top-left quadrant (rows ``< H // 2``, columns ``< W // 2``); Y: the rest."""

    def observed(self):
        _, h, w = self.image_shape
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[: h // 2, : w // 2] = True
        return mask


@CONDITIONS.register("half")
class HalfCondition(PixelCondition):
    """X: the left half (columns ``< W // 2``); Y: the right half."""

    def observed(self):
        _, h, w = self.image_shape
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[:, : w // 2] = True
        return mask


@CONDITIONS.register("label")
class LabelCondition(Condition):
    """X: the one-hot class, ``(N, classes)``; Y: the whole image, flattened."""

    def __init__(self, image_shape: Sequence[int], classes: int = 10):
        super().__init__(image_shape, classes)
        self.x_dim, self.y_dim = classes, math.prod(self.image_shape)

    def split(self, images, labels):
        self.check(images, labels)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.classes):
            raise ValueError(f"labels must lie in [0, {self.classes - 1}]; found "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        x = torch.nn.functional.one_hot(labels.long(), self.classes).to(images.dtype)
        return x, images.reshape(len(images), -1)

    def complete(self, images, y):
        return y.reshape(y.shape[:-1] + self.image_shape)

    def show_input(self, images):
        return torch.full_like(images, MISSING_GREY)

    def image_index(self):
        return torch.arange(self.y_dim) + self.x_dim

    def modelled_positions(self):
        return torch.arange(self.y_dim)


def build_condition(name: str, image_shape: Sequence[int], classes: int = 10) -> Condition:
    """The registered condition ``name`` for images of shape ``image_shape``."""
    return CONDITIONS.get(name)(image_shape, classes)


def pack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[x, y]`` as one-row images: ``(N, x_dim)``, ``(N, y_dim)`` -> ``(N, 1, 1, x_dim +
    y_dim)``, the one tensor per datum that the trainer batches."""
    if x.shape[:-1] != y.shape[:-1] or x.dim() != 2:
        raise ValueError(f"x and y must be (N, x_dim) and (N, y_dim); got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    return torch.cat([x, y.to(x.dtype)], -1)[:, None, None, :]


def unpack(batch: torch.Tensor, x_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack`: ``(B, 1, 1, D)`` -> ``x`` ``(B, x_dim)``, ``y``
    ``(B, D - x_dim)`` (views, by slicing: no host sync)."""
    flat = batch.reshape(batch.shape[0], -1)
    return flat[:, :x_dim], flat[:, x_dim:]
