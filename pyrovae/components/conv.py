"""Convolutional encoder and decoder for images, any channels and any size the blocks divide.

    ConvEncoder:  (..., C, H, W) -> [Conv 4x4 stride 2, act] x L -> flatten -> MLP(hidden)
                  -> (loc, scale) of (..., z_dim)
    ConvDecoder:  (..., z_dim) -> MLP(reversed hidden) -> (c_L, H / 2^L, W / 2^L)
                  -> [ConvTranspose 4x4 stride 2, act] x (L - 1) -> ConvTranspose to
                  C x params_per_value channels -> flat (..., prod(data_shape) x params)

Each down-sampling block halves the height and width (kernel 4, stride 2, padding 1), so H
and W must be divisible by 2^L (``ValueError`` otherwise). Leading dims (IWAE's particles K
and the batch B) are flattened into one batch for the convolutions and restored after, so a
net sees ``(K * B, C, H, W)`` and gives back ``(K, B, ...)``, every datum independent of the
others. Layers are ``PyroModule[nn.Conv2d]`` etc., as in :mod:`~pyrovae.components.networks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.networks import ACTIVATIONS, MIN_SCALE, MLP, check_sizes

KERNEL, STRIDE, PADDING = 4, 2, 1


def check_divisible(data_shape: Sequence[int], blocks: int) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image shape whose H and W the ``blocks`` halvings divide."""
    if len(data_shape) != 3:
        raise ValueError(f"conv networks need images (C, H, W); got data shape "
                         f"{tuple(data_shape)}")
    c, h, w = data_shape
    factor = 2 ** blocks
    if h % factor or w % factor:
        raise ValueError(f"conv networks: {blocks} down-sampling block(s) need the image "
                         f"height and width divisible by {factor}; the images are {h}x{w} "
                         f"(use fewer --channels, or an MLP)")
    return c, h, w


def _batched(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, torch.Size]:
    """``x`` with its leading dims flattened into one, and those dims."""
    lead = x.shape[: x.dim() - event_dims]
    return x.reshape((-1,) + x.shape[x.dim() - event_dims:]), lead


class ConvEncoder(PyroModule):
    """Q(z|X)'s network for images: ``(..., C, H, W)`` -> ``loc, scale`` ``(..., z_dim)``.

    Args:
        data_shape: ``(C, H, W)``.
        channels: output channels of each down-sampling block (e.g. ``(32, 64)``).
        hidden: widths of the fully connected layers after the convolutions.
        z_dim: latent dimension.
        activation: name in :data:`~pyrovae.components.networks.ACTIVATIONS`.
        context_dim: size of a flat context ``(..., context_dim)`` that ``forward`` joins to
            the convolutions' features before the fully connected layers (0: none), e.g. a
            conditional VAE's input X.
    """

    def __init__(self, data_shape: Sequence[int], channels: Sequence[int],
                 hidden: Sequence[int], z_dim: int, activation: str = "relu",
                 context_dim: int = 0):
        super().__init__()
        self.context_dim = context_dim
        channels = check_sizes(channels, "channels")
        c, h, w = check_divisible(data_shape, len(channels))
        self.data_shape, self.z_dim = (c, h, w), z_dim
        act = ACTIVATIONS.get(activation)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *channels[:-1]), channels):
            layers += [PyroModule[nn.Conv2d](c_in, c_out, KERNEL, STRIDE, PADDING), act()]
        self.convs = PyroModule[nn.Sequential](*layers)
        features = channels[-1] * (h // 2 ** len(channels)) * (w // 2 ** len(channels))
        self.head = MLP(features + context_dim, hidden, 2 * z_dim, activation)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(..., C, H, W)`` (and ``context`` ``(..., context_dim)`` when the encoder
        has one) -> ``loc, scale``, each ``(..., z_dim)``."""
        if (context is None) != (not self.context_dim):
            raise ValueError(f"this encoder takes a context of size {self.context_dim}; got "
                             f"{None if context is None else tuple(context.shape)}")
        flat, lead = _batched(x, 3)
        features = self.convs(flat).flatten(1)  # the last block ends in its activation
        if context is not None:
            features = torch.cat([features, context.expand(lead + context.shape[-1:])
                                  .reshape(len(features), -1)], -1)
        loc, raw_scale = self.head(features).reshape(lead + (2 * self.z_dim,)).split(
            self.z_dim, dim=-1)
        return loc, F.softplus(raw_scale) + MIN_SCALE


class ConvDecoder(PyroModule):
    """The decoder f(z) for images: ``(..., z_dim)`` -> ``(..., prod(data_shape) * params)``,
    the likelihood's raw parameters (``params`` per value), flattened as it expects.

    Args:
        z_dim: latent dimension.
        data_shape: ``(C, H, W)`` of the images.
        channels: the encoder's block channels; the decoder runs them in reverse.
        hidden: the encoder's fully connected widths; run in reverse.
        params_per_value: the likelihood's outputs per value.
        activation: hidden activation name.
    """

    def __init__(self, z_dim: int, data_shape: Sequence[int], channels: Sequence[int],
                 hidden: Sequence[int], params_per_value: int = 1, activation: str = "relu"):
        super().__init__()
        channels = check_sizes(channels, "channels")
        c, h, w = check_divisible(data_shape, len(channels))
        self.z_dim, self.out_dim = z_dim, c * h * w * params_per_value
        self.start = (channels[-1], h // 2 ** len(channels), w // 2 ** len(channels))
        act = ACTIVATIONS.get(activation)
        self.head = MLP(z_dim, tuple(reversed(tuple(hidden))), math.prod(self.start),
                        activation)
        self.head_activation = act()
        layers: list[nn.Module] = []
        ins = tuple(reversed(channels))
        outs = (*ins[1:], c * params_per_value)
        for i, (c_in, c_out) in enumerate(zip(ins, outs)):
            layers.append(PyroModule[nn.ConvTranspose2d](c_in, c_out, KERNEL, STRIDE, PADDING))
            if i < len(ins) - 1:
                layers.append(act())
        self.deconvs = PyroModule[nn.Sequential](*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat, lead = _batched(z, 1)
        features = self.head_activation(self.head(flat)).reshape((-1,) + self.start)
        return self.deconvs(features).reshape(lead + (self.out_dim,))
