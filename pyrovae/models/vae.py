"""Doersch's VAE as one Pyro model and one Pyro guide.

    model(x):  z ~ P(z)                                 site "z", in plate "data"
               x ~ P(X | z) = L(f(z; theta))            site "x", observed
    guide(x):  z ~ Q(z | X) = N(mu(X), diag sigma^2(X))  site "z", in plate "data"
               (or any registered guide built on the encoder's mu(X), sigma(X): a flow, ...)

Prior, likelihood and guide are objects found by name in their registries
(:data:`~pyrovae.components.priors.PRIORS`, :data:`~pyrovae.components.likelihoods.LIKELIHOODS`,
:data:`~pyrovae.components.guides.GUIDES`); the VAE never branches on which it holds.

Estimators, training, evaluation and plots use this pair and never reimplement it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.components.guides import Guide, build_guide
from pyrovae.components.likelihoods import Likelihood, build_likelihood
from pyrovae.components.networks import Decoder, Encoder, check_sizes
from pyrovae.components.priors import Prior, build_prior
from pyrovae.components.validation import check_int


def join(h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``[h, context]`` on the last dim, each broadcast over the other's leading (particle,
    batch) dims; ``h`` itself when there is no context. ``h`` ``(..., a)``, ``context``
    ``(..., c)`` -> ``(..., a + c)``."""
    if context is None:
        return h
    batch = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
    return torch.cat([h.expand(batch + h.shape[-1:]),
                      context.expand(batch + context.shape[-1:])], -1)


class VAE(PyroModule):
    """A variational autoencoder: prior, decoder + likelihood (the model); encoder + ``q``,
    the :class:`~pyrovae.components.guides.Guide` that turns the encoder's output into Q(z|X)
    (the guide). With a context C (``context_dim`` > 0) it is the conditional VAE of
    P(X|C): the prior becomes ``prior.condition(C)``, the decoder reads ``[z, C]`` and the
    encoder ``[C, X]``; :class:`~pyrovae.models.cvae.CVAE` is this with X = Doersch's Y.

    Args:
        data_shape: shape of one datum, e.g. ``(1, 28, 28)``.
        z_dim: latent dimension k >= 1.
        hidden: encoder hidden widths; the decoder uses them in reverse order.
        activation: hidden-layer activation name (``pyrovae.components.networks.ACTIVATIONS``).
        prior: a :class:`~pyrovae.components.priors.Prior` or a registered prior name.
        likelihood: a :class:`~pyrovae.components.likelihoods.Likelihood` or a registered name.
        guide: a :class:`~pyrovae.components.guides.Guide` or a registered name: Q(z|X) built
            on the encoder's ``loc, scale`` (``"diagonal"``, Doersch's; ``"flow"``, IAF steps).
        encoder, decoder: optional networks replacing the default MLPs; the encoder maps
            ``(B, *data_shape)`` to ``loc, scale`` of shape ``(B, z_dim)``, the decoder maps
            ``(..., z_dim)`` to ``(..., prod(data_shape) * likelihood.params_per_value)``.
        context_dim: size C of the flat context each datum comes with (0: none).
        observed: the name of the observed sample site (``"x"``; the CVAE's is ``"y"``).
        options: options for the components built from names (``components``,
            ``flow_steps``, ...), each passed to those that declare it.

    ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(B, *data_shape)``, and ``context``
    ``(B, context_dim)`` when ``context_dim`` > 0.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        z_dim: int = 2,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        prior: Prior | str = "standard_normal",
        likelihood: Likelihood | str = "gaussian",
        guide: Guide | str = "diagonal",
        encoder: torch.nn.Module | None = None,
        decoder: torch.nn.Module | None = None,
        context_dim: int = 0,
        observed: str = "x",
        **options,
    ):
        super().__init__()
        self.data_shape = check_sizes(data_shape, "data_shape")
        self.context_dim = check_int(context_dim, "context_dim", minimum=0)
        self.observed = observed
        prior_options = {"hidden": tuple(hidden), "activation": activation, **options}
        if context_dim:  # only conditional priors declare it; the others ignore the context
            prior_options["context_dim"] = context_dim
        self.prior = build_prior(prior, z_dim, **prior_options) if isinstance(prior, str) \
            else prior
        self.z_dim = self.prior.z_dim
        if self.z_dim != z_dim:
            raise ValueError(f"prior has z_dim {self.z_dim} but z_dim={z_dim} was asked for")
        self.likelihood = build_likelihood(likelihood, **options) \
            if isinstance(likelihood, str) else likelihood
        out_dim = math.prod(self.data_shape) * self.likelihood.params_per_value
        # the encoder reads the datum (with a context: the context, then the flat datum)
        self.input_shape = (math.prod(self.data_shape) + context_dim,) if context_dim \
            else self.data_shape
        self.encoder = encoder if encoder is not None else \
            Encoder(self.input_shape, hidden, z_dim, activation)
        self.decoder = decoder if decoder is not None else \
            Decoder(z_dim + context_dim, hidden, out_dim, activation)
        self.q = build_guide(guide, self.input_shape, z_dim, hidden=tuple(hidden), **options) \
            if isinstance(guide, str) else guide
        if self.q.z_dim != z_dim:
            raise ValueError(f"guide has z_dim {self.q.z_dim} but z_dim={z_dim} was asked for")
        self.prior.attach(self)  # priors built on the guide (VampPrior) take it here

    def _batch_size(self, x: torch.Tensor, context: torch.Tensor | None = None) -> int:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.data_shape))}) for this "
                f"model; got {tuple(x.shape)}"
            )
        if (context is None) != (not self.context_dim) or (
                context is not None and tuple(context.shape) != (x.shape[0], self.context_dim)):
            expected = f"(batch, {self.context_dim})" if self.context_dim else "none"
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context must have shape {expected} for this model; got {got}")
        return x.shape[0]

    def model(self, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """P(z) P(X|z) (or P(z|C) P(X|z, C)), with X observed at site ``observed``."""
        n = self._batch_size(x, context)
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior_given(context)((n,)))
            pyro.sample(self.observed, self.output(z, context), obs=x)

    def guide(self, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Q(z|X), e.g. N(mu(X), diag sigma^2(X)) for the ``diagonal`` guide."""
        n = self._batch_size(x, context)
        with pyro.plate("data", n):
            pyro.sample("z", self.guide_distribution(x, context))

    def prior_given(self, context: torch.Tensor | None = None):
        """P(z), or P(z|C) for a context ``(B, context_dim)``: a callable of the batch shape
        that returns the distribution (event ``(z_dim,)``)."""
        return self.prior if context is None else self.prior.condition(context)

    def guide_distribution(self, x: torch.Tensor,
                           context: torch.Tensor | None = None) -> dist.TorchDistribution:
        """Q(z|X) (or Q(z|X, C)): batch shape ``x``'s leading dims, event ``(z_dim,)``."""
        h = self._encoder_input(x, context)
        return self.q(h, *self.encoder(h))

    def _encoder_input(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """What the encoder (and the guide) read: ``x`` itself, or ``[C, flat X]`` with a
        context, shape ``(..., context_dim + prod(data_shape))``."""
        if context is None:
            return x
        return join(context, x.reshape(x.shape[: x.dim() - len(self.data_shape)] + (-1,)))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """Q(z|X) as a distribution: batch shape ``(B,)``, event shape ``(z_dim,)``."""
        return self.guide_distribution(x)

    def output(self, z: torch.Tensor, context: torch.Tensor | None = None
               ) -> dist.TorchDistribution:
        """P(X|z) (or P(X|z, C)) for ``z`` ``(..., z_dim)``: batch ``(...)``, event
        ``data_shape``."""
        self._need_context(context)
        return self.likelihood(self.decoder(join(z, context)), self.data_shape)

    def _need_context(self, context: torch.Tensor | None) -> None:
        if context is None and self.context_dim:
            raise ValueError(f"this model is conditional: pass context, shape (batch, "
                             f"{self.context_dim})")

    @torch.no_grad()
    def encode(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """One code per datum, ``(B, z_dim)``: the guide's ``location`` (mu(X) for the
        diagonal guide; mu(X) pushed through the flow for the flow guide)."""
        self._batch_size(x, context)
        h = self._encoder_input(x, context)
        return self.q.location(h, *self.encoder(h))

    def decode(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of P(X|z) (or P(X|z, C)) for codes ``z`` of shape ``(..., z_dim)``:
        ``(..., *data_shape)``."""
        return self.output(z, context).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder mean at the code :meth:`encode` gives (mu(X) for the diagonal guide);
        same shape as ``x``."""
        return self.decode(self.encode(x, context), context)

    @torch.no_grad()
    def sample(self, n: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder means of ``n`` prior draws z ~ P(z): shape ``(n, *data_shape)``; with a
        context ``(B, context_dim)``, ``n`` draws z ~ P(z|C) for each row: ``(n, B,
        *data_shape)``."""
        check_int(n, "n")
        self._need_context(context)
        z = self.prior((n,)).sample() if context is None else \
            self.prior_given(context)((len(context),)).sample((n,))
        return self.decode(z, context)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
