"""Reference computations for the tests (not part of the library): Monte-Carlo KL."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class KLEstimate(NamedTuple):
    """A Monte-Carlo KL divergence (nats) and its standard error."""

    value: torch.Tensor
    stderr: torch.Tensor
    method: str = "Monte Carlo"


def monte_carlo_kl(q, p, num_samples: int) -> KLEstimate:
    """Mean of ``log q(z) - log p(z)`` over ``num_samples`` draws z ~ q, with its s.e."""
    z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    terms = q.log_prob(z) - p.log_prob(z)
    return KLEstimate(terms.mean(0), terms.std(0) / math.sqrt(num_samples))
