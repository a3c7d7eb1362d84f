"""Guides Q(z|X): the family of approximate posteriors, built on the encoder's output.

The encoder (:class:`pyrovae.components.networks.Encoder`) maps X to ``loc, scale`` of shape
``(B, z_dim)``; a guide turns ``(x, loc, scale)`` into the distribution Q(z|X) that the VAE's
``guide(x)`` samples at site ``"z"``:

- ``forward(x, loc, scale)`` -> a distribution with batch shape ``(B,)``, event shape
  ``(z_dim,)``, reparameterised (``has_rsample``);
- ``location(x, loc, scale)`` -> one code per datum, ``(B, z_dim)``, for reconstructions and
  latent maps.

Doersch's point: a richer Q shrinks the gap log P(X) - ELBO = D[Q(z|X) || P(z|X)].
Registered: ``diagonal`` (Doersch's N(mu(X), diag sigma^2(X))) and ``flow`` (that Gaussian
followed by inverse-autoregressive flow steps conditioned on X, Kingma et al. 2016). New
guides plug in by registering a name in :data:`GUIDES`; their constructor takes
``(data_shape, z_dim)`` and keyword options with defaults (:func:`build_guide` passes each
only the options it declares, e.g. ``flow_steps``, ``hidden``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.flows import FlowDistribution, flow_step, made
from pyrovae.components.registry import Registry
from pyrovae.components.validation import check_int

GUIDES: Registry = Registry("guide", options="model components")


class Guide(PyroModule):
    """Base class: Q(z|X) from the encoder's ``loc, scale`` (and X itself, if it wants).

    Args:
        data_shape: shape of one datum, e.g. ``(1, 28, 28)``.
        z_dim: latent dimension.
    """

    def __init__(self, data_shape: Sequence[int], z_dim: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.z_dim = check_int(z_dim, "z_dim")

    def forward(self, x: torch.Tensor, loc: torch.Tensor,
                scale: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError  # pragma: no cover - abstract

    def location(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """A point code per datum, ``(B, z_dim)``: here the encoder's mean mu(X)."""
        return loc


@GUIDES.register("diagonal")
class DiagonalGuide(Guide):
    """Q(z|X) = N(mu(X), diag sigma^2(X)): Doersch's guide, no parameters of its own."""

    def forward(self, x, loc, scale):
        return dist.Normal(loc, scale).to_event(1)


@GUIDES.register("flow")
class FlowGuide(Guide):
    """Q(z|X): z_0 ~ N(mu(X), diag sigma^2(X)), then z_k = m_k(z_{k-1}, X) + exp(s_k(.)) z_{k-1}.

    Each step is Pyro's affine autoregressive transform (inverse autoregressive flow) whose
    MADE network also reads X (flattened, the context), orders alternating. A draw and its
    log-density take one pass per step: log Q(z_K|X) = log N(z_0) - sum_k sum_i s_k,i.

    Args:
        data_shape: shape of one datum.
        z_dim: latent dimension.
        flow_steps: number K >= 1 of IAF steps.
        hidden: MADE hidden widths (default: the VAE's; each raised to z_dim if smaller).

    ``location`` is the encoder's mean mu(X) pushed through the K steps: the flow's image of
    the base distribution's mode, a deterministic code (not E_Q[z], which has no closed form).
    The KL to any prior is estimated by Monte Carlo (no closed form for a flow).
    """

    def __init__(self, data_shape: Sequence[int], z_dim: int, flow_steps: int = 2,
                 hidden: Sequence[int] = (256,)):
        super().__init__(data_shape, z_dim)
        steps = check_int(flow_steps, "flow_steps")
        context = math.prod(self.data_shape)
        self.nets = PyroModule[nn.ModuleList](
            [made(z_dim, hidden, context, reverse=k % 2 == 1) for k in range(steps)])

    def _steps(self, x: torch.Tensor) -> list:
        context = x.reshape(x.shape[: x.dim() - len(self.data_shape)] + (-1,))
        return [flow_step(net, context) for net in self.nets]

    def forward(self, x, loc, scale):
        return FlowDistribution(dist.Normal(loc, scale).to_event(1), self._steps(x))

    def location(self, x, loc, scale):
        for step in self._steps(x):
            loc = step(loc)
        return loc


def build_guide(name: str, data_shape: Sequence[int], z_dim: int, **options) -> Guide:
    """Instantiate the guide ``name`` with the ``options`` its constructor accepts."""
    return GUIDES.build(name, data_shape, z_dim, **options)
