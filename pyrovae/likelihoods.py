"""Likelihoods P(X|z): how the decoder's raw output becomes a distribution over one datum.

A likelihood is a ``PyroModule`` with

- ``params_per_value``: how many decoder outputs it needs per data value (1 for a Bernoulli
  logit or a fixed-sigma Gaussian mean);
- ``forward(raw, data_shape)``: ``raw`` of shape ``(..., prod(data_shape) * params_per_value)``
  -> a distribution with batch shape ``raw.shape[:-1]`` and event shape ``data_shape``;
- ``check(x)``: raises ``ValueError`` naming the value range found and the range allowed when
  ``x`` lies outside the support (run once on the data, never inside the training step).

New likelihoods plug in by registering a name in :data:`LIKELIHOODS`; their constructor takes
keyword arguments only (e.g. ``sigma``), and unknown keywords are ignored by :func:`build`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


class Likelihood(PyroModule):
    """Base class. Subclasses set ``params_per_value`` and implement ``distribution``."""

    params_per_value: int = 1
    support_text: str = "any real value"

    def forward(self, raw: torch.Tensor, data_shape: Sequence[int]) -> dist.TorchDistribution:
        data_shape = tuple(data_shape)
        size = math.prod(data_shape)
        if raw.shape[-1] != size * self.params_per_value:
            raise ValueError(
                f"{type(self).__name__} needs {self.params_per_value} decoder output(s) per "
                f"value, {size * self.params_per_value} in all; got {raw.shape[-1]}"
            )
        shaped = raw.reshape(raw.shape[:-1] + (self.params_per_value,) + data_shape)
        params = shaped.unbind(-len(data_shape) - 1)
        return self.distribution(*params).to_event(len(data_shape))

    def distribution(self, *params: torch.Tensor) -> dist.TorchDistribution:
        """Elementwise distribution from ``params_per_value`` tensors shaped like the data."""
        raise NotImplementedError  # pragma: no cover - abstract

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the values of ``x`` inside the support."""
        return torch.isfinite(x)

    def check(self, x: torch.Tensor, hint: str = "") -> None:
        """Raise ``ValueError`` if any value of ``x`` is outside this likelihood's support."""
        bad = int((~self.in_support(x)).sum())
        if bad:
            found = f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
            raise ValueError(
                f"likelihood {self.name!r} needs data in {self.support_text}; found {bad} "
                f"values outside it (data range {found}){hint}"
            )

    @property
    def name(self) -> str:
        return next((n for n in LIKELIHOODS if LIKELIHOODS.get(n) is type(self)),
                    type(self).__name__)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """P(X|z) = prod_i Bernoulli(x_i; sigmoid(f_i(z))), for binary data.

    The raw output is the logit; the mean is the pixel's probability of being 1.
    """

    support_text = "{0, 1} (binary)"

    def distribution(self, logits):
        return dist.Bernoulli(logits=logits)

    def in_support(self, x):
        return (x == 0) | (x == 1)

    def check(self, x, hint=""):
        super().check(x, hint or "; binarise grey images with --binarize static or dynamic")


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    """P(X|z) = N(X; f(z), sigma^2 I) with a fixed sigma: Doersch's default (his eq. 1).

    Args:
        sigma: standard deviation, in the data's units (pixel values in [0, 1]); > 0.
    """

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0 \
                or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def distribution(self, loc):
        return dist.Normal(loc, self.sigma)


def build_likelihood(name: str, **options) -> Likelihood:
    """Instantiate the likelihood ``name`` with the ``options`` its constructor accepts."""
    cls = LIKELIHOODS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
