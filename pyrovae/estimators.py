"""ELBO estimators by name: each turns (model, guide, batch) into a loss.

An :class:`Estimator` offers two ways to train the same model/guide pair:

- ``pyro_elbo()``: a ``pyro.infer.ELBO`` for the reference stepper, ``pyro.infer.SVI``;
- ``differentiable_loss(model, guide, *args)``: a scalar tensor whose value is the negative
  ELBO and whose gradient is the estimator's gradient, computed from Pyro traces of the same
  model and guide **without any host-device synchronisation** (no ``.item()``, no branching
  on tensor values), for the fast stepper. Pyro's own ``Trace_ELBO.differentiable_loss`` calls
  ``torch_item`` twice per site and then ``surrogate - torch_item(surrogate)``; here the
  equivalent ``loss + (surrogate - surrogate.detach())`` keeps everything on the device.

Both are sums over the batch (Pyro's convention): divide by the batch size for nats per datum.
Registered names: ``trace`` (Pyro's ``Trace_ELBO``, every term sampled), ``meanfield``
(Pyro's ``TraceMeanField_ELBO``: the KL from torch's registry) and ``analytic`` (pyrovae's
analytic-KL ELBO, :mod:`pyrovae.kl`). New estimators plug in by registering a name in
:data:`ESTIMATORS`.
"""

from __future__ import annotations

import pyro.infer
import torch
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero

from pyrovae.kl import PyroAnalyticELBO, analytic_particle_elbo, closed_form_kl
from pyrovae.registry import Registry

ESTIMATORS: Registry = Registry("estimator")


class Estimator:
    """Base class: particles, Pyro's trace machinery, and the sync-free loss.

    Args:
        num_particles: number of Monte-Carlo draws averaged per step (K >= 1).
        vectorize_particles: draw the K particles in one vectorised pass (an extra plate on
            the left) instead of a Python loop.
    """

    pyro_class: type = pyro.infer.Trace_ELBO

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = False):
        if not isinstance(num_particles, int) or isinstance(num_particles, bool) \
                or num_particles < 1:
            raise ValueError(f"particles must be a positive integer, got {num_particles!r}")
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self._elbo = self.pyro_elbo()  # owns particle handling and trace generation

    def pyro_elbo(self) -> pyro.infer.ELBO:
        """A fresh Pyro ELBO object with this estimator's settings (for ``pyro.infer.SVI``)."""
        return self.pyro_class(
            num_particles=self.num_particles, vectorize_particles=self.vectorize_particles
        )

    def traces(self, model, guide, *args, **kwargs):
        """The ``num_particles`` (model trace, guide trace) pairs of one estimate (Pyro's)."""
        return self._elbo._get_traces(model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Negative ELBO (summed over the batch) as a 0-dim tensor; no host-device sync."""
        loss = 0.0
        for model_trace, guide_trace in self.traces(model, guide, *args, **kwargs):
            loss = loss + self.particle_loss(model_trace, guide_trace)
        return loss

    def particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        """One trace pair's share of :meth:`differentiable_loss` (divided by K)."""
        elbo, surrogate = self.particle_elbo(model_trace, guide_trace)
        # value: the ELBO; gradient: the surrogate's (the ELBO's own graph is cut, as
        # Pyro's torch_item does, or pathwise terms would count twice)
        return -(elbo.detach() + (surrogate - surrogate.detach())) / self.num_particles

    def particle_elbo(self, model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO, surrogate ELBO) of one trace pair; the surrogate's gradient is the estimate."""
        raise NotImplementedError  # pragma: no cover - abstract


@ESTIMATORS.register("trace")
class TraceELBO(Estimator):
    """Pyro's ``Trace_ELBO``: ELBO = E_Q[log P(X, z) - log Q(z|X)], all terms sampled.

    Gradients are pathwise for reparameterised guide sites and score-function (with Pyro's
    partial Rao-Blackwellisation over plates) otherwise: the same maths as
    ``Trace_ELBO._differentiable_loss_particle``, without its ``torch_item`` calls.
    """

    pyro_class = pyro.infer.Trace_ELBO

    def particle_elbo(self, model_trace, guide_trace):
        elbo = 0.0
        surrogate = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _log_prob, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                term = log_r.sum_to(site["cond_indep_stack"])
                surrogate = surrogate + (term * score_function_term).sum()
        return elbo, surrogate


@ESTIMATORS.register("meanfield")
class MeanFieldELBO(Estimator):
    """Pyro's ``TraceMeanField_ELBO``: ELBO = E_Q[log P(X|z)] - D[Q(z|X) || P(z)].

    The KL of each latent site comes from ``torch.distributions.kl_divergence`` (torch's and
    Pyro's registered pairs), falling back to the sampled ``log q - log p`` where no pair is
    registered; the reconstruction term is sampled with the guide's reparameterised draw.
    The same maths as ``TraceMeanField_ELBO._differentiable_loss_particle``, without its
    ``torch_item`` (see :func:`pyrovae.kl.analytic_particle_elbo`).
    """

    pyro_class = pyro.infer.TraceMeanField_ELBO

    def kl(self, q, p) -> torch.Tensor:
        """D[q || p] in closed form; ``NotImplementedError`` when there is none."""
        return torch.distributions.kl_divergence(q, p)

    def particle_elbo(self, model_trace, guide_trace):
        elbo = analytic_particle_elbo(model_trace, guide_trace, self.kl)
        return elbo, elbo  # every term is pathwise: the value is its own surrogate


@ESTIMATORS.register("analytic")
class AnalyticELBO(MeanFieldELBO):
    """pyrovae's analytic-KL ELBO (Doersch's eq. 7): ``meanfield`` with pyrovae's own KL.

    Diagonal-Gaussian pairs go through :func:`pyrovae.kl.kl_diag_normal`, other pairs
    through the registry (:func:`pyrovae.kl.closed_form_kl`). For SVI it offers
    :class:`pyrovae.kl.PyroAnalyticELBO`. For the VAE it is the same estimator as
    ``meanfield``, by an independent implementation of the KL: tests hold the two equal to
    float precision on a shared draw, and ``pyrovae check-kl`` checks it against ``trace``.
    """

    pyro_class = PyroAnalyticELBO

    def kl(self, q, p) -> torch.Tensor:
        return closed_form_kl(q, p)


def build_estimator(name: str, num_particles: int = 1, **options) -> Estimator:
    """Instantiate the estimator registered as ``name``."""
    return ESTIMATORS.get(name)(num_particles=num_particles, **options)
