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
New estimators plug in by registering a name in :data:`ESTIMATORS`.
"""

from __future__ import annotations

import pyro.infer
import torch
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero

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

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Negative ELBO (summed over the batch) as a 0-dim tensor; no host-device sync."""
        loss = 0.0
        for model_trace, guide_trace in self._elbo._get_traces(model, guide, args, kwargs):
            elbo, surrogate = self.particle_elbo(model_trace, guide_trace)
            # value: the ELBO; gradient: the surrogate's (the ELBO's own graph is cut, as
            # Pyro's torch_item does, or pathwise terms would count twice)
            particle = elbo.detach() + (surrogate - surrogate.detach())
            loss = loss - particle / self.num_particles
        return loss

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


def build_estimator(name: str, num_particles: int = 1, **options) -> Estimator:
    """Instantiate the estimator registered as ``name``."""
    return ESTIMATORS.get(name)(num_particles=num_particles, **options)
