"""Closed-form KL divergences (Doersch's eq. 7 and friends) and the analytic-KL ELBO.

Doersch's key equation,

    log P(X) - D[Q(z|X) || P(z|X)] = E_Q[log P(X|z)] - D[Q(z|X) || P(z)],

has a closed-form KL term when Q and P(z) are Gaussian (his eq. 7, k = z_dim):

    D[N(mu, diag s^2) || N(0, I)] = 1/2 sum_j (s_j^2 + mu_j^2 - 1 - log s_j^2)       (nats)

Here:

- :func:`closed_form_kl`, the one closed-form path every estimator takes: torch's KL registry
  (``torch.distributions.kl_divergence``: torch's, Pyro's and the pairs registered here),
  ``NotImplementedError`` for a pair with no closed form;
- a registered pair that torch and Pyro lack: a full-covariance Gaussian Q
  (``MultivariateNormal``, ``LowRankMultivariateNormal``) against a diagonal Gaussian P;
- :func:`kl_standard_normal` (eq. 7) and :func:`kl_diag_normal` on tensors: the reference
  formulas, written out as in the tutorial and tested against torch's registry;
- :func:`analytic_particle_elbo`: the ELBO of one (model, guide) trace pair with the KL of
  every latent site in closed form where possible (Monte Carlo otherwise), the maths of
  Pyro's ``TraceMeanField_ELBO`` without its host syncs.

Shapes: a diagonal Gaussian is ``Normal(loc, scale)`` reinterpreted with ``.to_event(n)``;
KLs have the distributions' (broadcast) batch shape. Nothing here reads a tensor's value on
the host: the dispatch is on Python types only, so the analytic ELBO is sync-free.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_identically_zero
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
    register_kl,
)
from torch.distributions.kl import _KL_REGISTRY


def kl_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """D[N(loc, diag scale^2) || N(0, I)] = 1/2 sum(scale^2 + loc^2 - 1 - 2 log scale).

    ``loc``, ``scale`` (> 0): shape ``(..., k)``; returns nats, shape ``(...)``.
    """
    return 0.5 * (scale.square() + loc.square() - 1.0 - 2.0 * scale.log()).sum(-1)


def kl_diag_normal(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: torch.Tensor,
                   scale_p: torch.Tensor) -> torch.Tensor:
    """D[N(loc_q, diag scale_q^2) || N(loc_p, diag scale_p^2)], summed over the last dim.

        = sum_j log(scale_p/scale_q) + (scale_q^2 + (loc_q - loc_p)^2) / (2 scale_p^2) - 1/2

    Arguments broadcast against each other, shape ``(..., k)``; returns nats, shape ``(...)``.
    """
    ratio = (scale_q / scale_p).square()
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p).square() - 1.0 - ratio.log()).sum(-1)


def closed_form_kl(q, p) -> torch.Tensor:
    """D[q || p] in closed form from torch's KL registry, shape: the broadcast batch shape of
    ``q`` and ``p``; ``NotImplementedError`` when no closed form is registered for the pair.
    """
    return kl_divergence(q, p)


def _register_if_missing(type_q: type, type_p: type):
    """``register_kl(type_q, type_p)``, refusing a pair torch or Pyro already has."""
    if (type_q, type_p) in _KL_REGISTRY:
        raise RuntimeError(f"KL({type_q.__name__} || {type_p.__name__}) is already "
                           f"registered as {_KL_REGISTRY[type_q, type_p]!r}")
    return register_kl(type_q, type_p)


@_register_if_missing(LowRankMultivariateNormal, Independent)
@_register_if_missing(MultivariateNormal, Independent)
def kl_gaussian_diag_normal(q, p) -> torch.Tensor:
    """D[N(m, S) || N(mu, diag s^2)] for a full-covariance Gaussian q, diagonal Gaussian p.

    KL = cross-entropy - entropy; the cross-entropy to a diagonal Gaussian needs only q's
    mean and variances:  E_q[-log p] = sum_j log s_j + log(2 pi)/2 + (S_jj + (m_j - mu_j)^2)
    / (2 s_j^2).  Registered for torch's dispatch; shape: the broadcast batch shape.
    Raises ``NotImplementedError`` unless p is ``Independent(Normal, 1)``.
    """
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    loc_p, scale_p = p.base_dist.loc, p.base_dist.scale
    cross_entropy = (scale_p.log() + 0.5 * math.log(2 * math.pi)
                     + (q.variance + (q.loc - loc_p).square()) / (2 * scale_p.square()))
    return cross_entropy.sum(-1) - q.entropy()


def site_kl(guide_site: dict, model_site: dict, kl=closed_form_kl,
            closed_form: bool = True) -> torch.Tensor:
    """D[Q || P] of one latent site, summed over its batch, as Pyro would weigh it.

    Uses ``kl(q, p)`` scaled and masked like the site's log-prob (plate subsampling scale,
    ``poutine.mask``); falls back to the sampled ``log q(z) - log p(z)`` when ``kl`` raises
    ``NotImplementedError`` or ``closed_form`` is False (the site fails the mean-field
    condition: :func:`closed_form_sites`). Returns a 0-dim tensor, nats.
    """
    if not closed_form:
        return guide_site["log_prob_sum"] - model_site["log_prob_sum"]
    try:
        value = kl(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return guide_site["log_prob_sum"] - model_site["log_prob_sum"]
    value = value.expand(guide_site["fn"].batch_shape)
    return scale_and_mask(value, guide_site["scale"], guide_site["mask"]).sum()


def _latent_order(trace, other) -> list[str]:
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and name in other.nodes]


def closed_form_sites(model_trace, guide_trace) -> set[str]:
    """The latent sites whose KL may be taken in closed form at the guide's draws.

    D[Q(z | ...) || P(z | pa(z))] replaces log P(z | pa) - log Q(z | ...) in expectation only
    when z's model parents were drawn before z in the guide (Pyro's condition: no model
    parent of z is a guide descendant of z). Read from the order of the sites, as Pyro's
    ``TraceMeanField_ELBO`` checks it: z qualifies when every latent that the model draws
    before z the guide also draws before z. A top-down model with a bottom-up guide (the
    hierarchical VAE) qualifies at its top site only; a one-latent VAE always does.
    """
    model_order = _latent_order(model_trace, guide_trace)
    guide_position = {name: i for i, name in enumerate(_latent_order(guide_trace, model_trace))}
    return {name for i, name in enumerate(model_order)
            if all(guide_position[earlier] < guide_position[name]
                   for earlier in model_order[:i])}


def site_kl_differences(model_trace, guide_trace, kl=closed_form_kl) -> dict[str, torch.Tensor]:
    """Per latent site in both traces: its ``trace`` ELBO term minus its analytic one,
    log P(z) - log Q(z) + D[Q || P] (0-dim tensors, nats, summed over the batch). Each has
    expectation 0 under Q when the site's KL is right (exactly 0 where it falls back to
    Monte Carlo)."""
    out, closed = {}, closed_form_sites(model_trace, guide_trace)
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
            continue
        guide_site = guide_trace.nodes[name]
        out[name] = site["log_prob_sum"] - guide_site["log_prob_sum"] \
            + site_kl(guide_site, site, kl, name in closed)
    return out


def _check_reparameterised(site: dict) -> None:
    if not is_identically_zero(site["score_parts"].score_function):
        raise ValueError(f"the analytic-KL ELBO needs reparameterised guide sites; site "
                         f"{site['name']!r} ({type(site['fn']).__name__}) is not: train with "
                         "the 'trace' estimator (check-kl compares the analytic ELBO's "
                         "pathwise gradients, so it cannot check this pair)")


def analytic_particle_elbo(model_trace, guide_trace, kl=closed_form_kl) -> torch.Tensor:
    """ELBO of one (model, guide) trace pair, the KL of each latent site in closed form.

        ELBO = sum_observed log P(x|z) - sum_latent D[Q(z) || P(z)]      (0-dim tensor, nats)

    The z in log P(x|z) is the guide's reparameterised draw, so the value is also its own
    pathwise gradient estimate. Latent sites in both traces use :func:`site_kl`; a model
    latent absent from the guide adds its sampled log-prob (as ``Trace_ELBO`` does); an
    auxiliary guide site subtracts its sampled log-prob. Where a site fails the mean-field
    condition (a model parent of z drawn after z in the guide: :func:`closed_form_sites`) its
    KL is sampled instead, so the estimate stays unbiased where ``TraceMeanField_ELBO`` only
    warns.
    """
    elbo, closed = 0.0, closed_form_sites(model_trace, guide_trace)
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"] or name not in guide_trace.nodes:
            elbo = elbo + site["log_prob_sum"]
            continue
        _check_reparameterised(guide_trace.nodes[name])
        elbo = elbo - site_kl(guide_trace.nodes[name], site, kl, name in closed)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes:
            _check_reparameterised(site)
            elbo = elbo - site["log_prob_sum"]
    return elbo
