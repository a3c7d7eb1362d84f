"""The KL family of estimators: the ELBO with sampled or closed-form KL terms.

Registered here: ``trace`` (Pyro's ``Trace_ELBO``), ``tracegraph`` (``TraceGraph_ELBO``) and
``analytic`` (the closed-form-KL ELBO, Pyro's ``TraceMeanField_ELBO``; :mod:`pyrovae.inference
.kl`). Each adds only its maths to
:class:`~pyrovae.inference.elbo.Estimator`, as Pyro's ``trace_elbo.py`` does to ``ELBO``.
"""

from __future__ import annotations

import pyro.infer
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.tracegraph_elbo import _compute_elbo
from pyro.infer.util import is_identically_zero, torch_item

from pyrovae.inference.elbo import ESTIMATORS, Estimator, EstimatorAxes
from pyrovae.inference.kl import analytic_particle_elbo, closed_form_kl


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


@ESTIMATORS.register("tracegraph")
class TraceGraphELBO(Estimator):
    """Pyro's ``TraceGraph_ELBO``: the ELBO, with the score-function term of each
    non-reparameterised site multiplied only by the costs downstream of it in the dependency
    graph (provenance tracking), plus any baselines its ``infer`` dict asks for.

    Pyro 1.9.2 offers it only through ``loss_and_grads``; the sync-free loss here is Pyro's
    own ``_compute_elbo`` (tensors, no ``torch_item``). For a reparameterised guide it equals
    ``trace`` in value and gradient.
    """

    pyro_class = pyro.infer.TraceGraph_ELBO
    AXES = EstimatorAxes(rao_blackwell="dependency graph")

    def particle_elbo(self, model_trace, guide_trace):
        elbo, surrogate_loss = _compute_elbo(model_trace, guide_trace)
        return elbo, -surrogate_loss


class SiteCheckedMeanFieldELBO(pyro.infer.TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO`` (for ``pyro.infer.SVI``) with pyrovae's per-site rule:
    a latent whose model parents the guide draws after it gets a sampled KL instead of the
    closed form (:func:`~pyrovae.inference.kl.closed_form_sites`), where Pyro's would warn and
    be biased. On a model that meets the mean-field condition (every one-latent VAE) it is
    Pyro's estimator term for term."""

    def _get_trace(self, model, guide, args, kwargs):
        # Trace_ELBO's traces, without TraceMeanField_ELBO's site-order warning (handled)
        return pyro.infer.Trace_ELBO._get_trace(self, model, guide, args, kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = analytic_particle_elbo(model_trace, guide_trace, closed_form_kl)
        return -torch_item(elbo), -elbo


@ESTIMATORS.register("analytic")
class AnalyticELBO(Estimator):
    """The analytic-KL ELBO (Doersch's eq. 7; Pyro's ``TraceMeanField_ELBO``):
    ELBO = E_Q[log P(X|z)] - D[Q(z|X) || P(z)].

    The KL of each latent site comes from :func:`~pyrovae.inference.kl.closed_form_kl`
    (torch's registry, with the pairs pyrovae registers), falling back to the sampled
    ``log q - log p`` where no pair is registered; the reconstruction term is sampled with
    the guide's reparameterised draw. The same maths as
    ``TraceMeanField_ELBO._differentiable_loss_particle`` without its ``torch_item``, except
    that a latent failing the mean-field condition (a model parent drawn after it in the
    guide, as in the hierarchical VAE's lower layers) has its KL sampled, not biased;
    ``pyro_elbo()`` is Pyro's ``TraceMeanField_ELBO`` with that rule
    (:class:`SiteCheckedMeanFieldELBO`), for SVI. ``pyrovae check-kl`` checks it against
    ``trace`` on shared draws.
    """

    pyro_class = SiteCheckedMeanFieldELBO
    AXES = EstimatorAxes(kl="analytic", rao_blackwell="none")
    supports_score_function = False

    def particle_elbo(self, model_trace, guide_trace):
        elbo = analytic_particle_elbo(model_trace, guide_trace, closed_form_kl)
        return elbo, elbo  # every term is pathwise: the value is its own surrogate
