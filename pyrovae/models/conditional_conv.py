"""Convolutional networks for the conditional VAE (``--model cvae --network conv``).

The CVAE (:mod:`pyrovae.models.cvae`) is a VAE of the modelled values Y with the input X as
its context, and both travel flat: its encoder reads ``[X, Y]`` and its decoder ``[z, X]``.
These two networks put the image back together around the convolutions, for any registered
:class:`~pyrovae.models.conditioning.Condition`:

    ConditionalConvEncoder: [X, Y] (..., x_dim + y_dim) -> the image (..., C, H, W), by
        :meth:`~pyrovae.models.conditioning.Condition.image_index` (the observed and the
        modelled pixels in place; for ``label``, Y itself) -> ConvEncoder, with X joined to
        the convolutions' features -> loc, scale (..., z_dim)
    ConditionalConvDecoder: [z, X] (..., in_dim) -> ConvDecoder of the whole image -> the
        likelihood's parameters of Y's pixels only (..., params * y_dim), by
        :meth:`~pyrovae.models.conditioning.Condition.modelled_positions`

So the observed pixels are read by the convolutions where they lie, and only Y is scored.
The index tensors are buffers (they move with the module, and indexing by them needs no
host sync, so the networks are capturable in a CUDA graph). Leading (particle, batch) dims
are kept as :mod:`~pyrovae.components.conv`'s networks keep them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.nn import PyroModule

from pyrovae.components.conv import ConvDecoder, ConvEncoder
from pyrovae.models.conditioning import Condition


class ConditionalConvEncoder(PyroModule):
    """Q(z|X, Y)'s network: ``[X, Y]`` ``(..., x_dim + y_dim)`` -> ``loc, scale``
    ``(..., z_dim)``.

    Args:
        condition: the task: which pixels are X and which Y, on images ``(C, H, W)``.
        channels, hidden, z_dim, activation: as :class:`~pyrovae.components.conv.ConvEncoder`.
    """

    def __init__(self, condition: Condition, channels: Sequence[int], hidden: Sequence[int],
                 z_dim: int, activation: str = "relu"):
        super().__init__()
        self.x_dim, self.image_shape = condition.x_dim, condition.image_shape
        self.register_buffer("image_index", condition.image_index())
        self.net = ConvEncoder(condition.image_shape, channels, hidden, z_dim, activation,
                               context_dim=condition.x_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = h.index_select(-1, self.image_index).reshape(h.shape[:-1] + self.image_shape)
        return self.net(image, context=h[..., :self.x_dim])


class ConditionalConvDecoder(PyroModule):
    """P(Y|z, X)'s network (or the baseline's, on X alone): ``(..., in_dim)`` -> the
    likelihood's raw parameters of Y, ``(..., params_per_value * y_dim)``, laid out as
    :class:`~pyrovae.components.likelihoods.Likelihood` expects for data shape ``(y_dim,)``.

    Args:
        in_dim: z_dim + x_dim for the CVAE, x_dim for the regressor.
        condition: the task.
        channels, hidden, params_per_value, activation: as
            :class:`~pyrovae.components.conv.ConvDecoder` (of the whole image).
    """

    def __init__(self, in_dim: int, condition: Condition, channels: Sequence[int],
                 hidden: Sequence[int], params_per_value: int = 1, activation: str = "relu"):
        super().__init__()
        self.params_per_value = params_per_value
        self.register_buffer("modelled", condition.modelled_positions())
        self.net = ConvDecoder(in_dim, condition.image_shape, channels, hidden,
                               params_per_value, activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.net(h)
        per_value = out.reshape(out.shape[:-1] + (self.params_per_value, -1))
        return per_value.index_select(-1, self.modelled).reshape(out.shape[:-1] + (-1,))
