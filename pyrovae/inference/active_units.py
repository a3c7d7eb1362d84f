"""Active latent units (Burda et al. 2015, section 5.2): which units carry information.

Burda, Grosse & Salakhutdinov measure a unit u's activity by how much its posterior mean moves
with the data,

    A_u = Cov_X( E_{u ~ Q(u|X)}[u] ),

and call it active when A_u > 0.01: an inactive unit's posterior is (nearly) the same for every
X, so it tells the decoder nothing (the posterior has collapsed to the prior there).

Here, for any model/guide pair and every latent site of its guide:

- E_Q[z | X] per datum is the mean over ``draws`` guide draws of the site's distribution mean
  ``E[z | its parents]`` (the law of total expectation), which is exact for a site whose
  distribution depends on X alone (one draw suffices: the first layer of a VAE) and has a much
  smaller Monte-Carlo error than the mean of sampled values for a site below others (a second
  stochastic layer). A distribution with no closed-form mean (a flow) contributes its
  sampled values; with ``draws`` d, the noise this adds to A_u is about Var_Q(u) / d, so use
  enough draws there (an inactive unit with Var_Q(u) ~ 1 needs d well above 100 to stay below
  0.01).
- A_u is the variance over the N data (unbiased, N - 1) of those per-datum means, per unit of
  the site's event (flattened), in the units of z squared.

Shapes: ``x`` ``(N, *data_shape)`` (or a tuple of the model's tensor arguments, data first);
each site's values ``(B, *event)`` per batch. Runs under ``torch.no_grad()`` and leaves the
parameters as they are; the draws come from Pyro's global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from pyrovae.components.validation import check_int
from pyrovae.inference.elbo import guess_plate_nesting
from pyrovae.inference.pair import Batch, ModelGuidePair, num_data, take

THRESHOLD = 0.01  # Burda et al.'s: active when Cov_X(E_Q[u|X]) > 0.01
DRAW_PLATE = "active_units_draws"


@dataclass
class SiteActivity:
    """One latent site's activity: ``activity`` ``(units,)`` is A_u per unit (z units squared),
    ``active`` the count above ``threshold``."""

    site: str
    activity: torch.Tensor
    threshold: float = THRESHOLD

    @property
    def units(self) -> int:
        return self.activity.numel()

    @property
    def active(self) -> int:
        return int((self.activity > self.threshold).sum())

    def summary(self) -> dict:
        """JSON-ready: ``active``, ``units``, ``threshold`` and the per-unit ``activity``."""
        return {"active": self.active, "units": self.units, "threshold": self.threshold,
                "activity": [round(float(a), 6) for a in self.activity]}


def _site_mean(site: dict) -> torch.Tensor:
    """E[z | the site's parents] where the distribution has a closed-form mean, else the
    sampled value."""
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        return site["value"]
    return mean if mean.shape == site["value"].shape else site["value"]


def _posterior_means(pair: ModelGuidePair, args: tuple[torch.Tensor, ...], draws: int,
                     nesting: int) -> dict[str, torch.Tensor]:
    """Per latent guide site, E_Q[z|X] per datum of this batch, ``(B, units)`` float64."""
    plate = pyro.plate(DRAW_PLATE, draws, dim=-(nesting + 1))
    trace = prune_subsample_sites(poutine.trace(plate(pair.guide)).get_trace(*args))
    batch, means = num_data(args), {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        value = _site_mean(site).double()
        batch_shape = value.shape[:value.dim() - site["fn"].event_dim]
        if batch_shape[-1:] != (batch,) or math.prod(batch_shape) != draws * batch:
            raise ValueError(f"active units need every latent site in the data plate (one "
                             f"value per datum); site {name!r} has shape "
                             f"{tuple(value.shape)} for {batch} data and {draws} draws")
        means[name] = value.reshape(draws, batch, -1).mean(0)
    return means


AUTO_DRAWS = 100  # draws per datum when the posterior means are not exact at one draw


@torch.no_grad()
def active_units(pair: ModelGuidePair, x: Batch, draws: int | None = None,
                 batch_size: int = 500, threshold: float = THRESHOLD
                 ) -> tuple[dict[str, SiteActivity], int]:
    """A_u = Cov_X(E_Q[u|X]) of every unit of every latent site of ``pair``'s guide, on the
    data ``x`` (see the module): ``({site: SiteActivity} in the guide's order, draws used)``.

    Args:
        draws: guide draws per datum for the posterior means (exact at 1 for sites whose
            distribution depends on X only). ``None``: 1 when the guide has one latent site
            and it has a closed-form mean (a VAE's diagonal Gaussian: exact), else
            :data:`AUTO_DRAWS`.
        batch_size: data per pass (memory: ``draws x batch_size`` guide evaluations).
        threshold: the activity above which a unit counts as active (Burda's 0.01).
    """
    check_int(batch_size, "batch_size")
    n = num_data(x)
    if n < 2:
        raise ValueError(f"active units need at least 2 data (a covariance over X); got {n}")
    nesting = guess_plate_nesting(pyro.infer.Trace_ELBO(vectorize_particles=True),
                                  pair.model, pair.guide, take(x, slice(0, 1)), {})
    draws = _auto_draws(pair, take(x, slice(0, 1)), nesting) if draws is None \
        else check_int(draws, "draws")
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, batch_size):
        batch = take(x, slice(start, start + batch_size))
        for name, means in _posterior_means(pair, batch, draws, nesting).items():
            parts.setdefault(name, []).append(means)
    return {name: SiteActivity(name, torch.cat(p).var(0).float().cpu(), threshold)
            for name, p in parts.items()}, draws


def _auto_draws(pair: ModelGuidePair, args: tuple[torch.Tensor, ...], nesting: int) -> int:
    """1 when one draw gives the exact posterior means (one latent site, closed-form mean),
    else :data:`AUTO_DRAWS`."""
    trace = poutine.trace(pyro.plate(DRAW_PLATE, 1, dim=-(nesting + 1))(pair.guide)
                          ).get_trace(*args)
    latent = [s for s in prune_subsample_sites(trace).nodes.values()
              if s["type"] == "sample" and not s["is_observed"]]
    exact = len(latent) == 1 and _site_mean(latent[0]) is not latent[0]["value"]
    return 1 if exact else AUTO_DRAWS


def activity_report(activity: dict[str, SiteActivity], draws: int) -> dict:
    """What ``evaluation.json`` records: per site its summary, and the totals."""
    return {"active_units": {name: a.summary() for name, a in activity.items()},
            "active_units_total": sum(a.active for a in activity.values()),
            "active_units_draws": draws}
