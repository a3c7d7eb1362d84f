"""Pyro's affine autoregressive flows (IAF / MAF), as pyrovae's flow prior and guide use them.

One flow step is Pyro's ``AffineAutoregressive`` transform (Kingma et al. 2016):

    y = mu(x) + exp(s(x)) * x,      mu_i, s_i depend only on the x_j before x_i in an order,

so its Jacobian is triangular, log|det dy/dx| = sum_i s_i(x), and ``y`` comes out of one
network pass, while the inverse takes ``input_dim`` sequential passes. The network is Pyro's
MADE (``AutoRegressiveNN``, or ``ConditionalAutoRegressiveNN`` with a context such as X).

What this module adds to Pyro's classes:

- :func:`made`: the network converted to a ``PyroModule`` in place (Pyro builds it from plain
  ``nn.Linear`` layers, which classic ``SVI`` would silently leave untrained), with a fixed
  order (identity, or reversed for every other step) instead of a random permutation;
- :class:`AffineAutoregressive`: Pyro's transform with an inverse that reads no tensor value
  on the host (Pyro's loops over the permutation tensor and indexes with its 0-dim elements:
  one ``.item()``, a GPU sync, per dimension), so flows stay inside the sync-free step;
- :class:`FlowDistribution`: Pyro's ``TransformedDistribution`` whose draws keep
  ``log_prob`` differentiable;
- :func:`flow_step`: a fresh transform per call, conditioned on a context when given. Pyro's
  transforms cache their last (x, y) pair; a fresh one per model/guide call never serves a
  stale pair and never keeps a graph alive between steps (it also keeps modules deep-copyable).

Shapes: inputs ``(..., input_dim)``; a context ``(..., context_dim)`` broadcasts against them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial

import pyro.distributions as dist
import torch
from pyro.distributions import transforms
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from pyro.nn.module import PyroModule, to_pyro_module_
from torch import nn


def made(input_dim: int, hidden: Sequence[int], context_dim: int = 0,
         reverse: bool = False) -> PyroModule:
    """Pyro's MADE network for one affine autoregressive step, as a ``PyroModule``.

    Args:
        input_dim: dimension of the flow's variable (z_dim), >= 1.
        hidden: hidden widths; each is raised to ``input_dim`` if smaller (MADE needs it).
        context_dim: dimension of the conditioning context (0: unconditional).
        reverse: order ``input_dim - 1, ..., 0`` instead of ``0, ..., input_dim - 1``.

    Returns the network, which maps ``x`` (and ``context``) to ``(mean, log_scale)``, each
    ``(..., input_dim)``; its order is also kept as a tuple of ints in ``net.order``.
    """
    order = torch.arange(input_dim)
    order = order.flip(0) if reverse else order
    widths = [max(int(h), input_dim) for h in hidden]
    with warnings.catch_warnings():  # input_dim == 1: an affine map of the context, as meant
        warnings.filterwarnings("ignore", message=".*input_dim = 1")
        if context_dim:
            net = ConditionalAutoRegressiveNN(input_dim, context_dim, widths, permutation=order,
                                              nonlinearity=nn.ReLU())
        else:
            net = AutoRegressiveNN(input_dim, widths, permutation=order, nonlinearity=nn.ReLU())
    to_pyro_module_(net)
    net.order = tuple(order.tolist())  # read once here, never inside a training step
    return net


class AffineAutoregressive(transforms.AffineAutoregressive):
    """Pyro's ``AffineAutoregressive`` with a host-sync-free inverse.

    Args:
        autoregressive_nn: callable ``x -> (mean, log_scale)`` (see :func:`made`).
        order: the network's autoregressive order, as Python ints.
        **kwargs: Pyro's options (``log_scale_min_clip``, ``log_scale_max_clip``).

    ``_inverse`` solves y = mu(x) + exp(s(x)) * x for x one coordinate at a time, in
    ``order``: ``len(order)`` network passes, as Pyro's does, indexing with Python ints.
    """

    def __init__(self, autoregressive_nn, order: Sequence[int], **kwargs):
        super().__init__(autoregressive_nn, **kwargs)
        self.order = tuple(order)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = [torch.zeros_like(y[..., 0])] * y.size(-1)
        for i in self.order:
            mean, log_scale = self.arn(torch.stack(x, dim=-1))
            log_scale = clamp_preserve_gradients(log_scale, self.log_scale_min_clip,
                                                 self.log_scale_max_clip)
            x[i] = (y[..., i] - mean[..., i]) * torch.exp(-log_scale[..., i])
        # the last pass saw every coordinate but the last in order, all that s(x) depends on
        self._cached_log_scale = log_scale
        return torch.stack(x, dim=-1)


class FlowDistribution(dist.TransformedDistribution):
    """A base distribution pushed through transforms; ``sample()`` is ``rsample().detach()``.

    Torch's ``sample()`` runs the transforms under ``no_grad`` and leaves that pair in their
    caches, so ``log_prob`` of the draw would reuse it and silently carry no gradient; a
    detached copy of an ``rsample()`` is a new tensor, which ``log_prob`` scores afresh.
    """

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.rsample(sample_shape).detach()


def flow_step(net: PyroModule, context: torch.Tensor | None = None) -> AffineAutoregressive:
    """A fresh transform for the network ``net`` (from :func:`made`), conditioned on
    ``context`` of shape ``(..., context_dim)`` when given."""
    arn = net if context is None else partial(net, context=context)
    return AffineAutoregressive(arn, net.order)
