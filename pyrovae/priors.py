"""Priors P(z): ``PyroModule``s that return a distribution over the latent code.

The protocol (see ``../DESIGN.md``): a prior has ``z_dim`` and ``forward(batch_shape)``
returning a ``pyro.distributions.Distribution`` with batch shape ``batch_shape`` and event
shape ``(z_dim,)``. New priors plug in by registering a name in :data:`PRIORS`; their
constructor takes ``z_dim`` as its one positional argument.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrovae.registry import Registry

PRIORS: Registry = Registry("prior")


class Prior(PyroModule):
    """Base class of priors over a ``z_dim``-dimensional latent code."""

    def __init__(self, z_dim: int):
        super().__init__()
        if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
            raise ValueError(f"z_dim must be a positive integer, got {z_dim!r}")
        self.z_dim = z_dim

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        raise NotImplementedError  # pragma: no cover - abstract


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    """P(z) = N(0, I), Doersch's prior.

    ``forward(batch_shape)`` -> ``Normal(0, 1)`` with batch shape ``batch_shape``, event
    shape ``(z_dim,)``. Its zeros and ones are buffers, so they follow ``.to(device)``.
    """

    def __init__(self, z_dim: int):
        super().__init__(z_dim)
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return base.expand(torch.Size(batch_shape))
