"""Doersch's conditional VAE, P(Y|X) with a latent, and the deterministic regressor it beats.

    model(x, y):  z ~ P(z|X)                               site "z", in plate "data"
                      fixed:   N(0, I), independent of X (Doersch's choice)
                      learned: N(m(X), diag s(X)^2), a prior network
                  y ~ P(Y|z, X) = L(f(z, X; theta))        site "y", observed
    guide(x, y):  z ~ Q(z|X, Y) = N(mu(X, Y), diag sigma^2(X, Y))   site "z"

    log P(Y|X) >= E_Q[log P(Y|z, X)] - D[Q(z|X, Y) || P(z|X)]        (the conditional ELBO)

X is a conditioning argument, never a sample site; Y holds only the modelled values (the
unobserved pixels, :mod:`pyrovae.models.conditioning`), so observed pixels are never scored. The
likelihood L is any registered one (:data:`~pyrovae.components.likelihoods.LIKELIHOODS`); both
priors are diagonal Gaussians, so the KL to the guide has a closed form (``--elbo analytic``).

:class:`Regressor` is the baseline Doersch contrasts: the decoder's body on X alone,
y ~ L(g(X)), trained on the same likelihood; its log P(Y|X) is exact (no latent), and its
mean is the blurry average of all plausible completions.

:class:`PackedCVAE` is the CVAE on packed data (:func:`~pyrovae.models.conditioning.pack`), one
tensor per datum, so the trainer, steppers, :func:`~pyrovae.inference.evaluation.evaluate_elbo` and
:func:`~pyrovae.inference.evaluation.log_likelihood` use it as they use a VAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.components.data import DeviceBatches
from pyrovae.components.likelihoods import Likelihood, build_likelihood
from pyrovae.components.networks import Decoder, Encoder, check_sizes
from pyrovae.components.priors import StandardNormal
from pyrovae.components.registry import Registry
from pyrovae.models.conditioning import unpack

CVAE_PRIORS: Registry = Registry("cvae prior")


@CVAE_PRIORS.register("fixed")
class FixedPrior(PyroModule):
    """P(z|X) = N(0, I), whatever X: Doersch's conditional prior.

    ``forward(x)``: ``x`` ``(B, x_dim)`` -> batch ``(B,)``, event ``(z_dim,)``.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,),
                 activation: str = "relu"):
        super().__init__()
        self.base = StandardNormal(z_dim)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        return self.base(x.shape[:1])


@CVAE_PRIORS.register("learned")
class LearnedPrior(PyroModule):
    """P(z|X) = N(m(X), diag s(X)^2), a prior network (the encoder's architecture on X).

    ``forward(x)``: ``x`` ``(B, x_dim)`` -> batch ``(B,)``, event ``(z_dim,)``;
    ``s = softplus(.) + MIN_SCALE``.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,),
                 activation: str = "relu"):
        super().__init__()
        self.net = Encoder((x_dim,), hidden, z_dim, activation)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(*self.net(x)).to_event(1)


def _joined(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[z, x]`` on the last dim, ``x`` broadcast over the particle dims left of ``z``."""
    batch = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
    return torch.cat([z.expand(batch + z.shape[-1:]), x.expand(batch + x.shape[-1:])], -1)


def _likelihood(likelihood: Likelihood | str) -> Likelihood:
    return build_likelihood(likelihood) if isinstance(likelihood, str) else likelihood


class CVAE(PyroModule):
    """The conditional VAE: P(z|X), decoder f(z, X) + likelihood (model); Q(z|X, Y) (guide).

    Args:
        x_dim: size of the conditioning input X per datum.
        y_dim: number of modelled values Y per datum.
        z_dim: latent dimension k >= 1.
        hidden: encoder (and prior network) hidden widths; the decoder reverses them.
        activation: hidden activation name (:data:`~pyrovae.components.networks.ACTIVATIONS`).
        likelihood: a :class:`~pyrovae.components.likelihoods.Likelihood` or a registered name.
        prior: ``"fixed"`` (N(0, I)) or ``"learned"`` (N(m(X), diag s(X)^2)).

    ``model(x, y)`` and ``guide(x, y)`` take ``x`` ``(B, x_dim)`` and ``y`` ``(B, y_dim)``.
    """

    def __init__(self, x_dim: int, y_dim: int, z_dim: int = 2, hidden: Sequence[int] = (256,),
                 activation: str = "relu", likelihood: Likelihood | str = "bernoulli",
                 prior: str = "fixed"):
        super().__init__()
        self.x_dim, self.y_dim, self.z_dim = check_sizes((x_dim, y_dim, z_dim),
                                                         "x_dim, y_dim, z_dim")
        hidden = check_sizes(hidden)
        self.likelihood = _likelihood(likelihood)
        self.prior = CVAE_PRIORS.get(prior)(x_dim, z_dim, hidden, activation)
        self.encoder = Encoder((x_dim + y_dim,), hidden, z_dim, activation)
        self.decoder = Decoder(z_dim + x_dim, hidden,
                               y_dim * self.likelihood.params_per_value, activation)

    def _batch_size(self, x: torch.Tensor, y: torch.Tensor) -> int:
        if x.dim() != 2 or x.shape[1] != self.x_dim or y.shape != (x.shape[0], self.y_dim):
            raise ValueError(f"x and y must have shapes (batch, {self.x_dim}) and (batch, "
                             f"{self.y_dim}); got {tuple(x.shape)} and {tuple(y.shape)}")
        return x.shape[0]

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """P(z|X) P(Y|z, X), with Y observed at site ``"y"``."""
        n = self._batch_size(x, y)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("y", self.output(z, x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Q(z|X, Y) = N(mu(X, Y), diag sigma^2(X, Y))."""
        n = self._batch_size(x, y)
        with pyro.plate("data", n):
            pyro.sample("z", self.posterior(x, y))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """Q(z|X, Y): batch ``(B,)``, event ``(z_dim,)``."""
        return dist.Normal(*self.encoder(torch.cat([x, y], -1))).to_event(1)

    def output(self, z: torch.Tensor, x: torch.Tensor) -> dist.TorchDistribution:
        """P(Y|z, X) for ``z`` ``(..., B, z_dim)``, ``x`` ``(B, x_dim)``: batch ``(..., B)``,
        event ``(y_dim,)``."""
        return self.likelihood(self.decoder(_joined(z, x)), (self.y_dim,))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Means of P(Y|z, X) at ``n`` draws z ~ P(z|X) per input: ``(n, B, y_dim)``."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        z = self.prior(x).sample((n,))
        return self.output(z, x).mean


class Regressor(PyroModule):
    """The deterministic baseline: y ~ L(g(X)), g the CVAE decoder's body on X alone.

    Args: as :class:`CVAE` (no latent, no prior). ``forward(x)``: ``x`` ``(B, x_dim)`` ->
    P(Y|X), batch ``(B,)``, event ``(y_dim,)``.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: Sequence[int] = (256,),
                 activation: str = "relu", likelihood: Likelihood | str = "bernoulli"):
        super().__init__()
        self.x_dim, self.y_dim = check_sizes((x_dim, y_dim), "x_dim, y_dim")
        self.likelihood = _likelihood(likelihood)
        self.net = Decoder(x_dim, check_sizes(hidden), y_dim * self.likelihood.params_per_value,
                           activation)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        return self.likelihood(self.net(x), (self.y_dim,))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log P(y|x) per datum, nats, ``(B,)``: exact."""
        return self(x).log_prob(y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of P(Y|X), ``(B, y_dim)``: one prediction, the average completion."""
        return self(x).mean


def fit_regressor(regressor: Regressor, data: torch.Tensor, epochs: int, batch_size: int,
                  lr: float = 1e-3, dynamic_binarize: bool = False) -> list[float]:
    """Train ``regressor`` by Adam on -log P(Y|X) of packed ``data`` ``(N, 1, 1, x_dim +
    y_dim)`` (the CVAE's training data), the same batches and binarisation as the CVAE.

    Returns the mean training NLL per epoch (nats per datum).
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    optimizer = torch.optim.Adam(regressor.parameters(), lr=lr)
    batches = DeviceBatches(data, batch_size, dynamic_binarize)
    history = []
    for _ in range(epochs):
        total = torch.zeros((), device=data.device)
        for batch in batches:
            x, y = unpack(batch, regressor.x_dim)
            loss = -regressor.log_prob(x, y).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss / batch_size).backward()
            optimizer.step()
            total += loss.detach()
        history.append(float(total) / (len(batches) * batch_size))
    return history


@torch.no_grad()
def regressor_nll(regressor: Regressor, data: torch.Tensor,
                  batch_size: int = 1000) -> torch.Tensor:
    """-log P(y_i|x_i) per datum of packed ``data``, nats, ``(N,)`` float64 on the CPU."""
    parts = []
    for start in range(0, len(data), batch_size):
        x, y = unpack(data[start:start + batch_size], regressor.x_dim)
        parts.append(-regressor.log_prob(x, y).double().cpu())
    return torch.cat(parts)


class PackedCVAE(torch.nn.Module):
    """A :class:`CVAE` on packed data: ``model(batch) = cvae.model(x, y)``, ``[x, y] =
    batch`` of shape ``(B, 1, 1, x_dim + y_dim)``; same sites, same parameters.

    A plain ``nn.Module`` with no parameters of its own: the CVAE inside stays the top-level
    ``PyroModule`` (its Pyro names unchanged), so a CVAE used alone can be wrapped later.

    What the trainer, the steppers and the evaluation functions need of a VAE:
    ``model``/``guide`` of one tensor, ``data_shape``, ``likelihood``, ``z_dim``.
    """

    def __init__(self, cvae: CVAE):
        super().__init__()
        self.cvae = cvae
        self.data_shape = (1, 1, cvae.x_dim + cvae.y_dim)

    @property
    def likelihood(self) -> Likelihood:
        return self.cvae.likelihood

    @property
    def z_dim(self) -> int:
        return self.cvae.z_dim

    def unpack(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(batch.shape[1:]) != self.data_shape:
            raise ValueError(f"packed data must have shape (batch, "
                             f"{', '.join(map(str, self.data_shape))}); got {tuple(batch.shape)}")
        return unpack(batch, self.cvae.x_dim)

    def model(self, batch: torch.Tensor) -> None:
        self.cvae.model(*self.unpack(batch))

    def guide(self, batch: torch.Tensor) -> None:
        self.cvae.guide(*self.unpack(batch))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

