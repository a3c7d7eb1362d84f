"""Doersch's conditional VAE, P(Y|X) with a latent, and the deterministic regressor it beats.

    model(x, y):  z ~ P(z|X) = prior.condition(X)            site "z", in plate "data"
                      standard_normal: N(0, I), independent of X (Doersch's choice)
                      conditional_normal: N(m(X), diag s(X)^2), a prior network
                      any other registered prior: P(z) (vamp: the guide's Q(z|u_k, X))
                  y ~ P(Y|z, X) = L(f(z, X; theta))        site "y", observed
    guide(x, y):  z ~ Q(z|X, Y), any registered guide on the encoder of [X, Y]   site "z"

    log P(Y|X) >= E_Q[log P(Y|z, X)] - D[Q(z|X, Y) || P(z|X)]        (the conditional ELBO)

The CVAE *is* a :class:`~pyrovae.models.vae.VAE` of Y with the context X: the same model,
guide, priors, guides and likelihoods (``CVAE.model(x, y)`` is ``VAE.model(y, context=x)``
with the observed site named ``"y"``). X is a conditioning argument, never a sample site; Y
holds only the modelled values (the unobserved pixels, :mod:`pyrovae.models.conditioning`),
so observed pixels are never scored.

:class:`Regressor` is the baseline Doersch contrasts: the decoder's body on X alone,
y ~ L(g(X)), trained on the same likelihood through the same trainer (a Pyro model with no
latent, so its ELBO is log P(Y|X) exactly); its mean is the blurry average of all plausible
completions.

:class:`PackedCVAE` is a CVAE (or the regressor) on packed data
(:func:`~pyrovae.models.conditioning.pack`), one tensor per datum, so the trainer, steppers,
:func:`~pyrovae.inference.evaluation.evaluate_elbo` and
:func:`~pyrovae.inference.evaluation.log_likelihood` use it as they use a VAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.components.guides import Guide
from pyrovae.components.likelihoods import Likelihood, build_likelihood
from pyrovae.components.networks import Decoder, check_sizes
from pyrovae.components.priors import Prior
from pyrovae.models.conditioning import unpack
from pyrovae.models.vae import VAE


class CVAE(VAE):
    """The conditional VAE: a :class:`~pyrovae.models.vae.VAE` of Y with the context X.

    Args:
        x_dim: size of the conditioning input X per datum.
        y_dim: number of modelled values Y per datum.
        z_dim: latent dimension k >= 1.
        hidden: encoder (and prior network) hidden widths; the decoder reverses them.
        activation: hidden activation name (:data:`~pyrovae.components.networks.ACTIVATIONS`).
        likelihood: a :class:`~pyrovae.components.likelihoods.Likelihood` or a registered name.
        prior: a :class:`~pyrovae.components.priors.Prior` or a registered name (any of
            :data:`~pyrovae.components.priors.PRIORS`; ``conditional_normal`` is P(z|X)).
        guide: a :class:`~pyrovae.components.guides.Guide` or a registered name.
        options: component options (``components``, ``flow_steps``, ``sigma``, ...).

    ``model(x, y)`` and ``guide(x, y)`` take ``x`` ``(B, x_dim)`` and ``y`` ``(B, y_dim)``.
    """

    def __init__(self, x_dim: int, y_dim: int, z_dim: int = 2, hidden: Sequence[int] = (256,),
                 activation: str = "relu", likelihood: Likelihood | str = "bernoulli",
                 prior: Prior | str = "standard_normal", guide: Guide | str = "diagonal",
                 **options):
        x_dim, y_dim, z_dim = check_sizes((x_dim, y_dim, z_dim), "x_dim, y_dim, z_dim")
        super().__init__((y_dim,), z_dim, check_sizes(hidden), activation, prior, likelihood,
                         guide, context_dim=x_dim, observed="y", **options)
        self.x_dim, self.y_dim = x_dim, y_dim

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.x_dim or y.shape != (x.shape[0], self.y_dim):
            raise ValueError(f"x and y must have shapes (batch, {self.x_dim}) and (batch, "
                             f"{self.y_dim}); got {tuple(x.shape)} and {tuple(y.shape)}")

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """P(z|X) P(Y|z, X), with Y observed at site ``"y"``."""
        self._check(x, y)
        super().model(y, context=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Q(z|X, Y) from the encoder of ``[X, Y]``."""
        self._check(x, y)
        super().guide(y, context=x)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """Q(z|X, Y): batch ``(B,)``, event ``(z_dim,)``."""
        return self.guide_distribution(y, x)

    def conditional_prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """P(z|X) for ``x`` ``(B, x_dim)``: batch ``(B,)``, event ``(z_dim,)``."""
        return self.prior_given(x)((len(x),))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Means of P(Y|z, X) at ``n`` draws z ~ P(z|X) per input: ``(n, B, y_dim)``."""
        return self.sample(n, context=x)


class Regressor(PyroModule):
    """The deterministic baseline: y ~ L(g(X)), g the CVAE decoder's body on X alone.

    Args: as :class:`CVAE` (no latent, no prior); ``net``: a network in place of the MLP,
    ``(B, x_dim)`` -> ``(B, y_dim * params_per_value)`` (the CVAE's conv decoder on X alone,
    :class:`~pyrovae.models.conditional_conv.ConditionalConvDecoder`). ``forward(x)``: ``x``
    ``(B, x_dim)`` -> P(Y|X), batch ``(B,)``, event ``(y_dim,)``.
    """

    z_dim = 0  # no latent

    def __init__(self, x_dim: int, y_dim: int, hidden: Sequence[int] = (256,),
                 activation: str = "relu", likelihood: Likelihood | str = "bernoulli",
                 net: torch.nn.Module | None = None):
        super().__init__()
        self.x_dim, self.y_dim = check_sizes((x_dim, y_dim), "x_dim, y_dim")
        self.likelihood = build_likelihood(likelihood) if isinstance(likelihood, str) \
            else likelihood
        self.net = net if net is not None else Decoder(
            x_dim, check_sizes(hidden), y_dim * self.likelihood.params_per_value, activation)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        return self.likelihood(self.net(x), (self.y_dim,))

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """P(Y|X), with Y observed at site ``"y"``: no latent, so any ELBO is log P(Y|X)."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", self(x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Nothing to infer: the model has no latent site."""

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log P(y|x) per datum, nats, ``(B,)``: exact."""
        return self(x).log_prob(y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of P(Y|X), ``(B, y_dim)``: one prediction, the average completion."""
        return self(x).mean


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
    """A :class:`CVAE` (or a :class:`Regressor`) on packed data: ``model(batch) =
    cvae.model(x, y)``, ``[x, y] = batch`` of shape ``(B, 1, 1, x_dim + y_dim)``; same sites,
    same parameters.

    A plain ``nn.Module`` with no parameters of its own: the CVAE inside stays the top-level
    ``PyroModule`` (its Pyro names unchanged), so a CVAE used alone can be wrapped later.

    What the trainer, the steppers and the evaluation functions need of a VAE:
    ``model``/``guide`` of one tensor, ``data_shape``, ``likelihood``, ``z_dim``.
    """

    def __init__(self, cvae: CVAE | Regressor):
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

