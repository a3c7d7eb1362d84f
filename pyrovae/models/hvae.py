"""A VAE with L stacked stochastic layers (Burda et al. 2015's two-layer model, and deeper).

    model(x):  z_L ~ P(z_L)                                  site "z<L>", any registered prior
               z_l ~ P(z_l | z_{l+1}) = N(m_l(z_{l+1}), diag s_l(z_{l+1})^2),  l = L-1 .. 1
               x   ~ P(X | z_1)                               site "x", any likelihood
    guide(x):  z_1 ~ Q(z_1 | X),  z_l ~ Q(z_l | z_{l-1}),  l = 2 .. L
               (each a registered guide on its block's encoder: diagonal N(mu, diag sigma^2),
               or a flow)

all inside the plate ``"data"``, sites ``"z1"`` (next to the data) to ``"z<L>"`` (the top).
Every estimator trains it as it trains the VAE: they read Pyro traces, whatever their sites.
The analytic one takes a site's KL in closed form only where that is unbiased, which here is
the top site alone (each lower layer's model parent, the layer above, is drawn after it by
the bottom-up guide; :func:`~pyrovae.inference.kl.closed_form_sites`): the lower layers'
KLs are sampled.

Block l (1-based) is the deterministic network between stochastic layers l-1 and l (layer 0
is X): the encoder of Q(z_l | z_{l-1}) has the block's hidden widths, and the generative
network of P(z_{l-1} | z_l) (P(X | z_1) for l = 1) has them reversed. Burda's two-layer
architecture is ``latent=(100, 50), hidden=((100, 100), (50, 50)), activation="tanh"``.

The top prior's ``z_dim`` is ``latent[-1]``; a VampPrior mixes Q(z_L | u_k) at its
pseudo-inputs, where Q(z_L | u) is taken along the location path (each lower layer at its
guide's location, :meth:`HierarchicalVAE.guide_distribution`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.guides import build_guide
from pyrovae.components.likelihoods import Likelihood, build_likelihood
from pyrovae.components.networks import Decoder, Encoder, check_sizes
from pyrovae.components.priors import Prior, build_prior
from pyrovae.components.validation import check_int


def block_widths(hidden: Sequence[int] | Sequence[Sequence[int]], layers: int
                 ) -> tuple[tuple[int, ...], ...]:
    """Each block's hidden widths: one list of widths for every block, or one per block
    (``layers`` of them); ``ValueError`` otherwise."""
    hidden = list(hidden)
    if all(isinstance(h, int) and not isinstance(h, bool) for h in hidden):
        return (check_sizes(hidden, "hidden"),) * layers
    if len(hidden) != layers:
        raise ValueError(f"give the hidden widths of every block ({layers}, one per latent "
                         f"layer) or one list for all; got {len(hidden)}: {hidden}")
    return tuple(check_sizes(h, f"hidden widths of block {i + 1}") for i, h in enumerate(hidden))


class HierarchicalVAE(PyroModule):
    """A top-down generative model with ``L = len(latent)`` stochastic layers and a bottom-up
    guide (see the module docstring).

    Args:
        data_shape: shape of one datum, e.g. ``(1, 28, 28)``.
        latent: the layers' sizes, bottom (next to X) first; at least one.
        hidden: the deterministic widths of every block (one list), or of each block.
        activation: hidden-layer activation name.
        prior: P(z_L): a :class:`~pyrovae.components.priors.Prior` of ``latent[-1]`` units or
            a registered name (built with the top block's widths).
        likelihood: P(X | z_1): a :class:`~pyrovae.components.likelihoods.Likelihood` or a
            registered name.
        guide: the registered guide name of every layer's Q (``"diagonal"``, ``"flow"``).
        encoder, decoder: optional networks of the bottom block replacing its MLPs (e.g.
            :class:`~pyrovae.components.conv.ConvEncoder` / ``ConvDecoder``): the encoder
            maps ``(..., *data_shape)`` to ``loc, scale`` ``(..., latent[0])``, the decoder
            ``(..., latent[0])`` to the likelihood's raw parameters, flat.
        options: options for the components built from names (``sigma``, ``components``,
            ``flow_steps``), each passed to those that declare it.

    ``model(x)`` and ``guide(x)`` take ``x`` of shape ``(B, *data_shape)``.
    """

    observed = "x"
    context_dim = 0

    def __init__(self, data_shape: Sequence[int], latent: Sequence[int] = (100, 50),
                 hidden: Sequence[int] | Sequence[Sequence[int]] = ((100, 100), (50, 50)),
                 activation: str = "relu", prior: Prior | str = "standard_normal",
                 likelihood: Likelihood | str = "gaussian", guide: str = "diagonal",
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 **options):
        super().__init__()
        self.data_shape = check_sizes(data_shape, "data_shape")
        self.latent = check_sizes(latent, "latent")
        self.hidden = block_widths(hidden, len(self.latent))
        self.sites = tuple(f"z{i + 1}" for i in range(len(self.latent)))
        self.likelihood = build_likelihood(likelihood, **options) \
            if isinstance(likelihood, str) else likelihood
        below = (self.data_shape, *((size,) for size in self.latent[:-1]))  # block inputs
        self.encoders = PyroModule[nn.ModuleList](
            [encoder if i == 0 and encoder is not None else Encoder(shape, widths, size,
                                                                     activation)
             for i, (shape, widths, size) in enumerate(zip(below, self.hidden, self.latent))])
        self.q = PyroModule[nn.ModuleList](
            [build_guide(guide, shape, size, hidden=widths, **options)
             for shape, widths, size in zip(below, self.hidden, self.latent)])
        # P(z_l | z_{l+1}): the block above's widths, reversed (as the decoder reverses)
        self.conditionals = PyroModule[nn.ModuleList](
            [Encoder((self.latent[i + 1],), tuple(reversed(self.hidden[i + 1])),
                     self.latent[i], activation) for i in range(len(self.latent) - 1)])
        out_dim = math.prod(self.data_shape) * self.likelihood.params_per_value
        self.decoder = decoder if decoder is not None else \
            Decoder(self.latent[0], self.hidden[0], out_dim, activation)
        self.prior = build_prior(prior, self.latent[-1], hidden=self.hidden[-1],
                                 activation=activation, **options) \
            if isinstance(prior, str) else prior
        if self.prior.z_dim != self.latent[-1]:
            raise ValueError(f"prior has z_dim {self.prior.z_dim} but the top layer has "
                             f"{self.latent[-1]} units")
        self.prior.attach(self)

    @property
    def z_dim(self) -> int:
        """Units of the top layer z_L (what the prior draws, and :meth:`encode` gives)."""
        return self.latent[-1]

    def _batch_size(self, x: torch.Tensor, context: torch.Tensor | None = None) -> int:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.data_shape))}) for this "
                f"model; got {tuple(x.shape)}")
        if context is not None:
            raise ValueError("the hierarchical VAE takes no context")
        return x.shape[0]

    def model(self, x: torch.Tensor) -> None:
        """P(z_L) prod_l P(z_l | z_{l+1}) P(X | z_1), with X observed at site ``"x"``."""
        n = self._batch_size(x)
        with pyro.plate("data", n):
            z = pyro.sample(self.sites[-1], self.prior((n,)))
            for i in reversed(range(len(self.latent) - 1)):
                z = pyro.sample(self.sites[i], self.conditional(i, z))
            pyro.sample(self.observed, self.output(z), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """Q(z_1 | X) prod_l Q(z_l | z_{l-1}), bottom up."""
        n = self._batch_size(x)
        with pyro.plate("data", n):
            h = x
            for i, site in enumerate(self.sites):
                h = pyro.sample(site, self.layer_posterior(i, h))

    def conditional(self, i: int, above: torch.Tensor) -> dist.TorchDistribution:
        """P(z_{i+1} | z_{i+2}) (0-based ``i``) for ``above`` ``(..., latent[i+1])``: batch
        ``(...)``, event ``(latent[i],)``."""
        return dist.Normal(*self.conditionals[i](above)).to_event(1)

    def layer_posterior(self, i: int, below: torch.Tensor) -> dist.TorchDistribution:
        """Q(z_{i+1} | the layer below) (0-based ``i``; the layer below of z_1 is X): batch
        ``below``'s leading dims, event ``(latent[i],)``."""
        return self.q[i](below, *self.encoders[i](below))

    def _locations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's guide location along the location path from X, bottom first."""
        codes, h = [], x
        for i in range(len(self.latent)):
            h = self.q[i].location(h, *self.encoders[i](h))
            codes.append(h)
        return codes

    def guide_distribution(self, x: torch.Tensor,
                           context: torch.Tensor | None = None) -> dist.TorchDistribution:
        """Q(z_L | X) along the location path (every lower layer at its guide's location),
        batch ``x``'s leading dims, event ``(latent[-1],)``: what a VampPrior mixes."""
        if context is not None:
            raise ValueError("the hierarchical VAE takes no context")
        h = self._locations(x)[-2] if len(self.latent) > 1 else x
        return self.layer_posterior(len(self.latent) - 1, h)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """Q(z_L | X) along the location path (:meth:`guide_distribution`)."""
        return self.guide_distribution(x)

    def output(self, z1: torch.Tensor, context: torch.Tensor | None = None
               ) -> dist.TorchDistribution:
        """P(X | z_1) for ``z1`` ``(..., latent[0])``: batch ``(...)``, event ``data_shape``."""
        return self.likelihood(self.decoder(z1), self.data_shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The top code per datum, ``(B, latent[-1])``: the location path's last layer."""
        self._batch_size(x)
        return self._locations(x)[-1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of P(X | z_1) for top codes ``z`` ``(..., latent[-1])``, each lower layer at
        its conditional's mean: ``(..., *data_shape)``."""
        for i in reversed(range(len(self.latent) - 1)):
            z = self.conditional(i, z).mean
        return self.output(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of P(X | z_1) at z_1 = the location of Q(z_1 | X) (the ELBO's reconstruction
        term, at its most likely code); same shape as ``x``."""
        self._batch_size(x)
        return self.output(self._locations(x)[0]).mean

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Decoder means of ``n`` ancestral draws z_L ~ P(z_L), z_l ~ P(z_l | z_{l+1}):
        shape ``(n, *data_shape)``."""
        z = self.prior((check_int(n, "n"),)).sample()
        for i in reversed(range(len(self.latent) - 1)):
            z = self.conditional(i, z).sample()
        return self.output(z).mean

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
