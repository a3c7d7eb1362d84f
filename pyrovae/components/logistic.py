"""The discretised logistic mixture over 8-bit values (Salimans et al. 2017, PixelCNN++).

A value x in {0, 1/255, ..., 1} (an 8-bit intensity scaled to [0, 1]) is scored on the
centred scale c = 2 x - 1 in [-1, 1], where neighbouring values are 2/255 apart. With K
logistic components of means mu_k and scales s_k (on the centred scale) and weights pi_k:

    P(x) = sum_k pi_k [ sigma((c + 1/255 - mu_k) / s_k) - sigma((c - 1/255 - mu_k) / s_k) ]

for interior values, and the edge values take the tails: P(0) uses sigma((-1 + 1/255 -
mu_k) / s_k) (everything below), P(1) uses 1 - sigma((1 - 1/255 - mu_k) / s_k). The 256
probabilities sum to 1 exactly. The log of a difference of CDFs is computed in log space,
log sigma(u) + log(1 - exp(log sigma(l) - log sigma(u))) left of the component's mean and the
mirrored form right of it, so a bin far in a tail keeps its full relative precision and never
underflows to log 0 (PixelCNN++ instead switches to the density at the bin's centre below a
mass of 1e-5, an approximation).

Each value is independent given its parameters (PixelCNN++ also couples the colour channels
of a pixel; that autoregressive part is not here). Units: log-probabilities in nats per
value, of the discrete distribution (so bits per dimension are what the literature reports
for 8-bit images).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

LEVELS = 256
HALF_BIN = 1.0 / (LEVELS - 1)  # half the distance between neighbouring values on [-1, 1]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0 (clamped just below 0, so it stays finite)."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-30)))


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """K discretised logistics per value.

    Args:
        logits: ``(..., K)`` unnormalised log-weights of the components.
        loc: ``(..., K)`` means on the centred scale [-1, 1].
        log_scale: ``(..., K)`` log scales on the centred scale.

    Batch shape ``(...)``, event shape ``()``; values are in [0, 1] on the 1/255 grid.
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real,
                       "log_scale": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                 validate_args=None):
        self.logits, self.loc, self.log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        super().__init__(self.logits.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.logits.shape[-1:]
        return DiscretizedLogisticMixture(self.logits.expand(shape), self.loc.expand(shape),
                                          self.log_scale.expand(shape))

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P_k(x) of each component, ``(..., K)``, for ``value`` of the batch shape."""
        centred = (2.0 * value - 1.0).unsqueeze(-1) - self.loc
        inv_scale = torch.exp(-self.log_scale)
        upper = inv_scale * (centred + HALF_BIN)
        lower = inv_scale * (centred - HALF_BIN)
        log_below_upper = F.logsigmoid(upper)    # log sigma(upper): the value 0's mass
        log_above_lower = F.logsigmoid(-lower)   # log (1 - sigma(lower)): the value 1's
        # log(sigma(u) - sigma(l)), left and right of the mean (sigma(-l) - sigma(-u) there)
        left = log_below_upper + _log1mexp(F.logsigmoid(lower) - log_below_upper)
        right = log_above_lower + _log1mexp(F.logsigmoid(-upper) - log_above_lower)
        interior = torch.where(centred > 0, right, left)
        c = (2.0 * value - 1.0).unsqueeze(-1).expand_as(interior)
        return torch.where(c < -1 + HALF_BIN, log_below_upper,
                           torch.where(c > 1 - HALF_BIN, log_above_lower, interior))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(x), nats, shape: ``value`` broadcast with the batch shape."""
        weights = torch.log_softmax(self.logits, -1)
        return torch.logsumexp(self.component_log_prob(value) + weights, -1)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] over the 256 values, exactly, as (1/255) sum_{j=1}^{255} P(X >= j/255): batch
        shape. The tail probabilities are summed 16 levels at a time, so memory stays at 16
        times the parameters' size."""
        weights = torch.softmax(self.logits, -1)
        inv_scale = torch.exp(-self.log_scale)
        total = torch.zeros(self.batch_shape, dtype=self.loc.dtype, device=self.loc.device)
        for start in range(1, LEVELS, 16):
            j = torch.arange(start, min(start + 16, LEVELS), dtype=self.loc.dtype,
                             device=self.loc.device)
            edges = (-1 + (2 * j - 1) / (LEVELS - 1)).reshape((-1,) + (1,) * self.loc.dim())
            above = torch.sigmoid((self.loc - edges) * inv_scale)  # P_k(X >= j), per j
            total = total + (weights * above).sum((0, -1))
        return total / (LEVELS - 1)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Draws on the 1/255 grid: a component, a logistic draw, rounded to the nearest
        value (the edges take the tails), which is the discretised distribution exactly."""
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
            loc = self.loc.expand(shape + self.loc.shape[-1:]).gather(-1, k).squeeze(-1)
            log_scale = self.log_scale.expand(shape + self.loc.shape[-1:]).gather(-1, k)
            u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(1e-6, 1 - 1e-6)
            c = loc + log_scale.squeeze(-1).exp() * (u.log() - (-u).log1p())
            return torch.round((c.clamp(-1, 1) + 1) / 2 * (LEVELS - 1)) / (LEVELS - 1)


def on_the_grid(x: torch.Tensor, tolerance: float = 1e-4) -> torch.Tensor:
    """Boolean mask of the values of ``x`` in [0, 1] within ``tolerance`` / 255 of a multiple
    of 1/255 (8-bit data scaled to [0, 1])."""
    scaled = x * (LEVELS - 1)
    return (x >= 0) & (x <= 1) & ((scaled - scaled.round()).abs() <= tolerance)
