"""Evaluation: the ELBO of held-out data, in nats per datum.

Results are accumulated on the device and read once. Everything here runs under
``torch.no_grad()``; the model's parameters are not changed.
"""

from __future__ import annotations

import torch

from pyrovae.estimators import Estimator, build_estimator
from pyrovae.model import VAE


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000,
                  estimator: Estimator | str = "trace") -> float:
    """Mean ELBO of the data ``x`` (shape ``(N, *data_shape)``), nats per datum.

    Each datum's ELBO is estimated with the estimator's particles (one Monte-Carlo draw of
    z ~ Q(z|X) for the default ``trace``), so the mean carries Monte-Carlo noise on top of
    the data's own spread. Every datum is used, the last partial batch included.
    """
    if isinstance(estimator, str):
        estimator = build_estimator(estimator)
    if len(x) == 0:
        raise ValueError("cannot evaluate the ELBO of an empty data set")
    total = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        total -= estimator.differentiable_loss(vae.model, vae.guide, batch).detach()
    return float(total) / len(x)
