"""Probabilistic PCA as a pyrovae VAE: a model whose evidence and posterior are exact.

    model:  z ~ N(0, I_k),   x ~ N(W z + b, sigma^2 I_d)          d = prod(data_shape)
    guide:  Q(z|X) = N(A x + c, diag s^2)                          an affine encoder

Exact (Tipping & Bishop 1999), with M = W^T W + sigma^2 I_k:

    p(x)               = N(x; b, W W^T + sigma^2 I_d)
    p(z|x)             = N(M^-1 W^T (x - b), sigma^2 M^-1)
    ELBO(Q)            = E_Q[log p(x|z)] - D[Q || N(0, I)]
                       = -d/2 log(2 pi sigma^2) - (|x - W m - b|^2 + sum_j s_j^2 |W_:j|^2)
                         / (2 sigma^2) - D[N(m, diag s^2) || N(0, I)]       (m = A x + c)
    log p(x) - ELBO(Q) = D[Q || p(z|x)]

When W's columns are orthogonal, M is diagonal, so the posterior is a diagonal Gaussian that
the affine encoder can represent exactly (:meth:`LinearGaussianVAE.set_posterior_guide_`):
every ELBO estimator then equals log p(x), and ``trace`` does so on every draw. With any
other guide, each estimator's mean is below log p(x) by exactly D[Q || p(z|x)]. The exact
quantities are differentiable in the parameters, so Monte-Carlo gradients can be checked
against exact ones. Used as a test fixture (``tests/conftest.py``: ``linear_gaussian``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.likelihoods import GaussianLikelihood
from pyrovae.components.networks import check_sizes
from pyrovae.models.vae import VAE


class AffineEncoder(PyroModule):
    """Q(z|X) = N(A flat(x) + c, diag exp(log_scale)^2): one linear layer, a fixed scale.

    ``forward(x)``: ``(..., *data_shape)`` -> ``loc``, ``scale`` of shape ``(..., z_dim)``.
    """

    def __init__(self, data_shape: Sequence[int], z_dim: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.linear = PyroModule[nn.Linear](math.prod(self.data_shape), z_dim)
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.linear(x.flatten(x.dim() - len(self.data_shape)))
        return loc, self.log_scale.exp().expand_as(loc)


class LinearGaussianVAE(VAE):
    """Probabilistic PCA (see the module docstring) as a :class:`~pyrovae.models.vae.VAE`.

    Args:
        data_shape: shape of one datum; d = prod(data_shape).
        z_dim: latent dimension k.
        sigma: the observation noise's standard deviation (> 0), data units.

    The decoder is ``PyroModule[nn.Linear](k, d)`` (``weight`` = W, shape ``(d, k)``; ``bias``
    = b), the encoder an :class:`AffineEncoder`, the prior ``standard_normal``. Methods taking
    ``x`` expect shape ``(B, *data_shape)`` and return shape ``(B,)``, in nats.
    """

    def __init__(self, data_shape: Sequence[int] = (1, 2, 3), z_dim: int = 2,
                 sigma: float = 0.5):
        data_shape = check_sizes(data_shape, "data_shape")
        super().__init__(data_shape, z_dim, likelihood=GaussianLikelihood(sigma),
                         encoder=AffineEncoder(data_shape, z_dim),
                         decoder=PyroModule[nn.Linear](z_dim, math.prod(data_shape)))

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self._batch_size(x), -1)

    def _precision_factor(self) -> torch.Tensor:
        """M = W^T W + sigma^2 I_k, shape ``(k, k)``."""
        w = self.decoder.weight
        return w.T @ w + self.likelihood.sigma ** 2 * torch.eye(self.z_dim, dtype=w.dtype)

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) over flattened data: N(b, W W^T + sigma^2 I_d), event shape ``(d,)``."""
        w = self.decoder.weight
        cov = w @ w.T + self.likelihood.sigma ** 2 * torch.eye(w.shape[0], dtype=w.dtype)
        return dist.MultivariateNormal(self.decoder.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), shape ``(B,)``."""
        return self.marginal().log_prob(self._flat(x))

    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z|x) = N(M^-1 W^T (x - b), sigma^2 M^-1): batch ``(B,)``, event ``(k,)``."""
        m_inv = torch.linalg.inv(self._precision_factor())
        loc = (self._flat(x) - self.decoder.bias) @ self.decoder.weight @ m_inv
        return dist.MultivariateNormal(loc, covariance_matrix=self.likelihood.sigma ** 2 * m_inv)

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO of the current guide in closed form (see the module docstring), ``(B,)``."""
        loc, scale = self.encoder(x)
        w, sigma = self.decoder.weight, self.likelihood.sigma
        residual = self._flat(x) - loc @ w.T - self.decoder.bias
        spread = (scale.square() * w.square().sum(0)).sum(-1)
        d = w.shape[0]
        expected_log_lik = (-0.5 * d * math.log(2 * math.pi * sigma ** 2)
                            - (residual.square().sum(-1) + spread) / (2 * sigma ** 2))
        q = dist.Normal(loc, scale).to_event(1)
        prior = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
        return expected_log_lik - torch.distributions.kl_divergence(q, prior)  # torch's eq. 7

    def kl_to_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """D[Q(z|x) || p(z|x)], shape ``(B,)``: the gap log p(x) - ELBO(Q)."""
        return torch.distributions.kl_divergence(self.posterior(x), self.exact_posterior(x))

    @torch.no_grad()
    def set_posterior_guide_(self) -> LinearGaussianVAE:
        """Set the encoder to the posterior mean and precision diagonal (in place).

        A = M^-1 W^T, c = -A b, s_j = sigma / sqrt(M_jj): the exact posterior when W's columns
        are orthogonal, else the best diagonal-Gaussian (mean-field) approximation of it.
        """
        m = self._precision_factor()
        a = torch.linalg.solve(m, self.decoder.weight.T)
        self.encoder.linear.weight.copy_(a)
        self.encoder.linear.bias.copy_(-a @ self.decoder.bias)
        self.encoder.log_scale.copy_(math.log(self.likelihood.sigma) - 0.5 * m.diagonal().log())
        return self

    @torch.no_grad()
    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` draws x ~ p(x), shape ``(n, *data_shape)``, from a generator seeded ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        w = self.decoder.weight
        z = torch.randn(n, self.z_dim, generator=generator, dtype=w.dtype)
        noise = torch.randn(n, w.shape[0], generator=generator, dtype=w.dtype)
        x = z @ w.T + self.decoder.bias + self.likelihood.sigma * noise
        return x.reshape((n,) + self.data_shape)

    @classmethod
    def random(cls, data_shape: Sequence[int] = (1, 2, 3), z_dim: int = 2, sigma: float = 0.5,
               seed: int = 0, orthogonal: bool = True,
               dtype: torch.dtype = torch.float64) -> LinearGaussianVAE:
        """A model with random W (orthogonal columns of norms in [1, 2] when ``orthogonal``),
        b, and a random guide that is *not* the posterior; parameters of ``dtype``."""
        vae = cls(data_shape, z_dim, sigma).to(dtype)
        generator = torch.Generator().manual_seed(seed)

        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=dtype)

        d = math.prod(vae.data_shape)
        weight = draw(d, z_dim)
        if orthogonal:
            norms = 1.0 + torch.rand(z_dim, generator=generator, dtype=dtype)
            weight = torch.linalg.qr(weight).Q * norms
        with torch.no_grad():
            vae.decoder.weight.copy_(weight)
            vae.decoder.bias.copy_(0.5 * draw(d))
            vae.encoder.linear.weight.copy_(0.3 * draw(z_dim, d))
            vae.encoder.linear.bias.copy_(0.3 * draw(z_dim))
            vae.encoder.log_scale.copy_(-0.5 + 0.3 * draw(z_dim))
        return vae


def make_linear_gaussian(n: int = 8, seed: int = 0, **options) -> tuple[LinearGaussianVAE,
                                                                          torch.Tensor]:
    """A :meth:`LinearGaussianVAE.random` model and ``n`` data drawn from it (seed + 1)."""
    vae = LinearGaussianVAE.random(seed=seed, **options)
    return vae, vae.sample_data(n, seed=seed + 1)
