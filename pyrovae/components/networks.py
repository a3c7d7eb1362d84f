"""Encoder and decoder networks, built from sizes.

All layers are ``PyroModule[nn.Linear]`` so that each parameter is one tensor shared by the
module and Pyro's parameter store (a plain ``nn.Linear`` inside a ``PyroModule`` would be
silently left untrained by classic ``SVI``). Every network acts on the last dimension and
keeps any leading (batch, particle) dimensions, so data stays independent across the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.registry import Registry

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU)
ACTIVATIONS.register("tanh", nn.Tanh)
ACTIVATIONS.register("softplus", nn.Softplus)
ACTIVATIONS.register("elu", nn.ELU)
ACTIVATIONS.register("gelu", nn.GELU)

MIN_SCALE = 1e-5  # floor on the encoder's standard deviations, keeps log q finite
NETWORKS = ("mlp", "conv")  # fully connected (here), convolutional (components.conv)


def check_sizes(hidden: Sequence[int], what: str = "hidden") -> tuple[int, ...]:
    """Validate a list of layer widths; returns it as a tuple."""
    sizes = tuple(hidden)
    if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
        raise ValueError(f"{what} sizes must be positive integers, got {list(hidden)!r}")
    return sizes


class MLP(PyroModule):
    """Fully connected network ``in_dim -> hidden... -> out_dim``, activation between layers.

    Input ``(..., in_dim)``, output ``(..., out_dim)``; no activation after the last layer.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        sizes = (in_dim, *check_sizes(hidden), out_dim)
        act = ACTIVATIONS.get(activation)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(PyroModule[nn.Linear](a, b))
            if i < len(sizes) - 2:
                layers.append(act())
        self.layers = PyroModule[nn.Sequential](*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


class Encoder(PyroModule):
    """Q(z|X)'s network: image -> (mu(X), sigma(X)) of a diagonal Gaussian.

    Args:
        data_shape: shape of one datum, e.g. ``(1, 28, 28)``; flattened to ``prod(data_shape)``.
        hidden: widths of the hidden layers.
        z_dim: latent dimension k.
        activation: name in :data:`ACTIVATIONS`.

    ``forward(x)``: ``x`` of shape ``(..., *data_shape)`` -> ``loc``, ``scale`` of shape
    ``(..., z_dim)``, ``scale = softplus(.) + MIN_SCALE > 0``.
    """

    def __init__(self, data_shape: Sequence[int], hidden: Sequence[int], z_dim: int,
                 activation: str = "relu"):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.z_dim = z_dim
        self.net = MLP(math.prod(self.data_shape), hidden, 2 * z_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[: x.dim() - len(self.data_shape)] + (-1,))
        loc, raw_scale = self.net(flat).split(self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE


class Decoder(PyroModule):
    """The decoder f(z; theta): latent -> the likelihood's raw parameters, flat.

    ``forward(z)``: ``z`` of shape ``(..., z_dim)`` -> ``(..., out_dim)`` where ``out_dim`` is
    ``prod(data_shape) * likelihood.params_per_value``; the likelihood gives it meaning.
    """

    def __init__(self, z_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        self.z_dim = z_dim
        self.out_dim = out_dim
        self.net = MLP(z_dim, tuple(reversed(tuple(hidden))), out_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
