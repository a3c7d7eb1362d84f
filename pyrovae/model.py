"""Doersch's VAE as one Pyro model and one Pyro guide.

    model(x):  z ~ P(z)                                 site "z", in plate "data"
               x ~ P(X | z) = L(f(z; theta))            site "x", observed
    guide(x):  z ~ Q(z | X) = N(mu(X), diag sigma^2(X))  site "z", in plate "data"

Estimators, training, evaluation and plots use this pair and never reimplement it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.likelihoods import Likelihood, build_likelihood
from pyrovae.networks import Decoder, Encoder, check_sizes
from pyrovae.priors import PRIORS, Prior


class VAE(PyroModule):
    """A variational autoencoder: prior, decoder + likelihood (the model), encoder (the guide).

    Args:
        data_shape: shape of one datum, e.g. ``(1, 28, 28)``.
        z_dim: latent dimension k >= 1.
        hidden: encoder hidden widths; the decoder uses them in reverse order.
        activation: hidden-layer activation name (``pyrovae.networks.ACTIVATIONS``).
        prior: a :class:`~pyrovae.priors.Prior` or a registered prior name.
        likelihood: a :class:`~pyrovae.likelihoods.Likelihood` or a registered name.
        encoder, decoder: optional networks replacing the default MLPs; the encoder maps
            ``(B, *data_shape)`` to ``loc, scale`` of shape ``(B, z_dim)``, the decoder maps
            ``(..., z_dim)`` to ``(..., prod(data_shape) * likelihood.params_per_value)``.

    ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(B, *data_shape)``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        z_dim: int = 2,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        prior: Prior | str = "standard_normal",
        likelihood: Likelihood | str = "gaussian",
        encoder: torch.nn.Module | None = None,
        decoder: torch.nn.Module | None = None,
    ):
        super().__init__()
        self.data_shape = check_sizes(data_shape, "data_shape")
        self.prior = PRIORS.get(prior)(z_dim) if isinstance(prior, str) else prior
        self.z_dim = self.prior.z_dim
        if self.z_dim != z_dim:
            raise ValueError(f"prior has z_dim {self.z_dim} but z_dim={z_dim} was asked for")
        self.likelihood = build_likelihood(likelihood) if isinstance(likelihood, str) \
            else likelihood
        out_dim = math.prod(self.data_shape) * self.likelihood.params_per_value
        self.encoder = encoder if encoder is not None else \
            Encoder(self.data_shape, hidden, z_dim, activation)
        self.decoder = decoder if decoder is not None else \
            Decoder(z_dim, hidden, out_dim, activation)

    def _batch_size(self, x: torch.Tensor) -> int:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.data_shape))}) for this "
                f"model; got {tuple(x.shape)}"
            )
        return x.shape[0]

    def model(self, x: torch.Tensor) -> None:
        """P(z) P(X|z), with X observed at site ``"x"``."""
        n = self._batch_size(x)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior((n,)))
            pyro.sample("x", self.likelihood(self.decoder(z), self.data_shape), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """Q(z|X) = N(mu(X), diag sigma^2(X))."""
        n = self._batch_size(x)
        with pyro.plate("data", n):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """Q(z|X) as a distribution: batch shape ``(B,)``, event shape ``(z_dim,)``."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of P(X|z) for codes ``z`` of shape ``(..., z_dim)``: ``(..., *data_shape)``."""
        return self.likelihood(self.decoder(z), self.data_shape).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean mu(X); same shape as ``x``."""
        self._batch_size(x)
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Decoder means of ``n`` prior draws z ~ P(z): shape ``(n, *data_shape)``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        return self.decode(self.prior((n,)).sample())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
