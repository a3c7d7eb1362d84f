"""A two-layer linear-Gaussian model whose evidence and posterior are exact: the reference
for estimators on models with two latent sites (the hierarchical VAE's structure).

    model:  z2 ~ N(0, I_k2)                       site "z2"
            z1 ~ N(A z2 + a, s1^2 I_k1)           site "z1"
            x  ~ N(B z1 + b, s^2 I_d)             site "x", observed
    guide:  z1 ~ Q(z1 | x),  z2 ~ Q(z2 | z1)      bottom up, full-covariance Gaussians

Exact, with P1 = A A^T + s1^2 I (the covariance of z1):

    p(x)           = N(x; B a + b, B P1 B^T + s^2 I)
    p(z1 | x)      = N(L1^-1 (P1^-1 a + B^T (x - b) / s^2), L1^-1),   L1 = P1^-1 + B^T B / s^2
    p(z2 | z1, x)  = p(z2 | z1) = N(L2^-1 A^T (z1 - a) / s1^2, L2^-1), L2 = I + A^T A / s1^2

so the guide Q(z1|x) Q(z2|z1) can be the exact posterior (:meth:`set_exact_guide_`): then
log P(x, z1, z2) - log Q(z1, z2 | x) = log p(x) on every draw, and every bound equals
log p(x). The model draws z2 before z1 and the guide z1 before z2, so z1 fails the
mean-field condition: its KL has no valid closed form at the guide's z2 (the analytic
estimator samples it; the top site z2's KL is in closed form). Parameters are float64
``nn.Parameter``\\ s; ``x`` is ``(B, d)``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def _eye(k: int) -> torch.Tensor:
    return torch.eye(k, dtype=torch.float64)


class TwoLayerLinearGaussian(nn.Module):
    """The model and guide of the module docstring, random parameters from ``seed``; the
    guide starts away from the posterior (``set_exact_guide_`` puts it there).

    Args:
        d, k1, k2: sizes of x, z1 and z2.
        s1, s: the standard deviations of z1 | z2 and x | z1.
    """

    def __init__(self, d: int = 5, k1: int = 3, k2: int = 2, s1: float = 0.7, s: float = 0.5,
                 seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def draw(*shape: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(*shape, generator=g, dtype=torch.float64))

        self.s1, self.s = s1, s
        self.A, self.a = draw(k1, k2), draw(k1, scale=0.5)
        self.B, self.b = draw(d, k1), draw(d, scale=0.5)
        # guide: z1 ~ N(F x + f, T1 T1^T), z2 ~ N(C z1 + c, T2 T2^T) (T lower triangular)
        self.F, self.f = draw(k1, d, scale=0.3), draw(k1, scale=0.3)
        self.T1 = nn.Parameter(_eye(k1) * 0.8)
        self.C, self.c = draw(k2, k1, scale=0.3), draw(k2, scale=0.3)
        self.T2 = nn.Parameter(_eye(k2) * 0.9)

    def model(self, x: torch.Tensor) -> None:
        k1, k2 = self.A.shape
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(k2, dtype=x.dtype), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T + self.a, self.s1).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.B.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(x @ self.F.T + self.f,
                                                           scale_tril=self.T1.tril()))
            pyro.sample("z2", dist.MultivariateNormal(z1 @ self.C.T + self.c,
                                                      scale_tril=self.T2.tril()))

    def z1_covariance(self) -> torch.Tensor:
        """P1 = A A^T + s1^2 I, ``(k1, k1)``."""
        return self.A @ self.A.T + self.s1 ** 2 * _eye(self.A.shape[0])

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(B a + b, B P1 B^T + s^2 I), event ``(d,)``."""
        cov = self.B @ self.z1_covariance() @ self.B.T + self.s ** 2 * _eye(self.B.shape[0])
        return dist.MultivariateNormal(self.B @ self.a + self.b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), ``(B,)`` nats."""
        return self.marginal().log_prob(x)

    def exact_z1_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z1 | x): batch ``(B,)``, event ``(k1,)``."""
        p1_inv = torch.linalg.inv(self.z1_covariance())
        cov = torch.linalg.inv(p1_inv + self.B.T @ self.B / self.s ** 2)
        loc = (p1_inv @ self.a + (x - self.b) @ self.B / self.s ** 2) @ cov
        return dist.MultivariateNormal(loc, covariance_matrix=cov)

    @torch.no_grad()
    def set_exact_guide_(self) -> TwoLayerLinearGaussian:
        """Q(z1|x) = p(z1|x) and Q(z2|z1) = p(z2|z1) (in place): the exact posterior."""
        k1, k2 = self.A.shape
        p1_inv = torch.linalg.inv(self.z1_covariance())
        cov1 = torch.linalg.inv(p1_inv + self.B.T @ self.B / self.s ** 2)
        self.F.copy_(cov1 @ self.B.T / self.s ** 2)
        self.f.copy_(cov1 @ (p1_inv @ self.a - self.B.T @ self.b / self.s ** 2))
        self.T1.copy_(torch.linalg.cholesky(cov1))
        cov2 = torch.linalg.inv(_eye(k2) + self.A.T @ self.A / self.s1 ** 2)
        self.C.copy_(cov2 @ self.A.T / self.s1 ** 2)
        self.c.copy_(-self.C @ self.a)
        self.T2.copy_(torch.linalg.cholesky(cov2))
        return self

    @torch.no_grad()
    def sample_data(self, n: int, seed: int = 1) -> torch.Tensor:
        """``n`` draws x ~ p(x), ``(n, d)``, from a generator seeded ``seed``."""
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, self.B.shape[0], generator=g, dtype=torch.float64)
        return self.marginal().loc + noise @ torch.linalg.cholesky(
            self.marginal().covariance_matrix).T
