"""Likelihoods P(X|z): how the decoder's raw output becomes a distribution over one datum.

A likelihood is a ``PyroModule`` with

- ``params_per_value``: how many decoder outputs it needs per data value (1 for a Bernoulli
  logit or a fixed-sigma Gaussian mean);
- ``forward(raw, data_shape)``: ``raw`` of shape ``(..., prod(data_shape) * params_per_value)``
  -> a distribution with batch shape ``raw.shape[:-1]`` and event shape ``data_shape``;
- ``check(x)``: raises ``ValueError`` naming the value range found and the range allowed when
  ``x`` lies outside the support (run once on the data, never inside the training step);
- ``kind``: what its log-likelihood is, a probability of discrete values or a density, which
  says what its bits per dimension can be compared with.

New likelihoods plug in by registering a name in :data:`LIKELIHOODS`; their constructor takes
keyword arguments only (e.g. ``sigma``), and unknown keywords are ignored by :func:`build`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule

from pyrovae.components.logistic import DiscretizedLogisticMixture, on_the_grid
from pyrovae.components.registry import Registry
from pyrovae.components.validation import check_int, check_positive_float

LIKELIHOODS: Registry = Registry("likelihood", options="model components")


class Likelihood(PyroModule):
    """Base class. Subclasses set ``params_per_value`` and implement ``distribution``."""

    params_per_value: int = 1
    support_text: str = "any real value"
    kind: str = ("density: a continuous density on the data's scale, not a probability of "
                 "8-bit values (its bits/dim are not comparable with those of 8-bit models)")
    normalised: bool = True  # log_prob is a normalised density (dequantised bits/dim bound)

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
    kind = "discrete: a probability of binary values"

    def distribution(self, logits):
        return dist.Bernoulli(logits=logits)

    def in_support(self, x):
        return (x == 0) | (x == 1)

    def check(self, x, hint=""):
        super().check(x, hint or "; binarise grey images with --binarize static or dynamic")


class FixedScaleLikelihood(Likelihood):
    """Base of the likelihoods with one fixed scale ``sigma`` (> 0, finite, data units)."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = check_positive_float(sigma, "sigma")


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(FixedScaleLikelihood):
    """P(X|z) = N(X; f(z), sigma^2 I) with a fixed sigma: Doersch's default (his eq. 1).

    Args:
        sigma: standard deviation, in the data's units (pixel values in [0, 1]); > 0.
    """

    def distribution(self, loc):
        return dist.Normal(loc, self.sigma)


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(FixedScaleLikelihood):
    """P(X|z) = prod_i Laplace(x_i; f_i(z), b) = prod_i exp(-|x_i - f_i(z)| / b) / (2 b).

    An L1 reconstruction error, more forgiving of outlying pixels than the Gaussian's L2.

    Args:
        sigma: the scale b, in the data's units; > 0 (the standard deviation is sqrt(2) b).
    """

    def distribution(self, loc):
        return dist.Laplace(loc, self.sigma)


@LIKELIHOODS.register("gaussian_learned")
class LearnedGaussianLikelihood(Likelihood):
    """P(X|z) = N(X; f(z), diag s(z)^2): the decoder also gives each pixel's sigma.

    Two decoder outputs per value: the mean, and the raw scale r with
    s = softplus(r) + MIN_SCALE (data units). The floor keeps log P(X|z) finite on pixels
    that never vary (a digit's border), where the maximum-likelihood sigma is 0.
    """

    params_per_value = 2
    MIN_SCALE = 1e-3

    def distribution(self, loc, raw_scale):
        return dist.Normal(loc, F.softplus(raw_scale) + self.MIN_SCALE)


class UnitIntervalLikelihood(Likelihood):
    """Base of the likelihoods of data in [0, 1] (grey levels)."""

    support_text = "[0, 1]"

    def in_support(self, x):
        return (x >= 0) & (x <= 1)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(UnitIntervalLikelihood):
    """P(X|z) = prod_i CB(x_i; lambda_i), lambda_i = sigmoid(f_i(z)), for data in [0, 1].

        CB(x; lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),
        C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)       (C(1/2) = 2)

    The normalised Bernoulli for grey pixels (Loaiza-Ganem & Cunningham 2019). The raw output
    is the logit; the mean is E[x] (not lambda).
    """

    def distribution(self, logits):
        return dist.ContinuousBernoulli(logits=logits)


class ClampedBeta(dist.Beta):
    """``Beta`` whose ``log_prob`` clamps the value into [eps, 1 - eps], eps = ``EPS``.

    Data at exactly 0 or 1 (most pixels of MNIST) would give log-densities of -inf or +inf;
    eps = 1e-3 is below half the 8-bit grey step (1/510), so no two 8-bit levels merge.
    """

    EPS = 1e-3

    def log_prob(self, value):
        return super().log_prob(value.clamp(self.EPS, 1 - self.EPS))


@LIKELIHOODS.register("beta")
class BetaLikelihood(UnitIntervalLikelihood):
    """P(X|z) = prod_i Beta(x_i; a_i(z), b_i(z)), for data in [0, 1].

    Two decoder outputs per value, a = softplus(.) + MIN_CONCENTRATION and likewise b; the
    mean is a / (a + b). Values are clamped to [1e-3, 1 - 1e-3] before scoring
    (:class:`ClampedBeta`), so 0 and 1 are accepted by :meth:`check` and scored finitely.
    """

    params_per_value = 2
    MIN_CONCENTRATION = 1e-3
    normalised = False  # clamped at the edges: not a density that integrates to 1 there

    def distribution(self, raw_a, raw_b):
        return ClampedBeta(F.softplus(raw_a) + self.MIN_CONCENTRATION,
                           F.softplus(raw_b) + self.MIN_CONCENTRATION)


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """P(X|z) = prod_i DLM(x_i; the decoder's K weights, means, scales): a mixture of K
    discretised logistics over the 256 values of 8-bit data (PixelCNN++'s likelihood, each
    value independent given z; :mod:`pyrovae.components.logistic`).

    ``3 K`` decoder outputs per value: K logits, K means (centred scale [-1, 1]), K raw log
    scales with log s = -7 + softplus(raw + 7) (a floor at e^-7, smooth). The data must be on
    the 1/255 grid of [0, 1] (MNIST as loaded; not binarised or dequantised data).

    Args:
        logistic_components: K >= 1.
    """

    support_text = "the 256 values k/255 of 8-bit data, k = 0..255"
    kind = "discrete: a probability of 8-bit values"
    MIN_LOG_SCALE = -7.0

    def __init__(self, logistic_components: int = 5):
        super().__init__()
        self.components = check_int(logistic_components, "logistic_components")
        self.params_per_value = 3 * self.components

    def distribution(self, *params):
        k = self.components
        logits, loc, raw = (torch.stack(params[i * k:(i + 1) * k], -1) for i in range(3))
        log_scale = self.MIN_LOG_SCALE + F.softplus(raw - self.MIN_LOG_SCALE)
        return DiscretizedLogisticMixture(logits, loc, log_scale)

    def in_support(self, x):
        return on_the_grid(x)

    def check(self, x, hint=""):
        super().check(x, hint or "; 8-bit images scaled by 1/255 (no --binarize, no "
                      "dequantisation)")


def build_likelihood(name: str, **options) -> Likelihood:
    """Instantiate the likelihood ``name`` with the ``options`` its constructor accepts."""
    return LIKELIHOODS.build(name, **options)
