"""The estimator base class: each estimator turns (model, guide, batch) into a loss.

An :class:`Estimator` trains the same model/guide pair two ways: ``pyro_elbo()``, a
``pyro.infer.ELBO`` for the reference stepper (``pyro.infer.SVI``), and
``differentiable_loss(model, guide, *args)``, a scalar tensor whose value is the negative
bound and whose gradient is the estimator's, computed from Pyro traces **without any
host-device synchronisation** (no ``.item()``, no branching on tensor values) for the fast
stepper: where Pyro writes ``surrogate - torch_item(surrogate)``, here
``loss + (surrogate - surrogate.detach())``. Both are sums over the batch (Pyro's
convention): divide by the batch size for nats per datum.

Each class states its place on the axes of a variational loss as data, an
:class:`EstimatorAxes` in ``AXES`` (an instance's ``axes`` fills in K, alpha, the gradient);
comparison tables (:mod:`pyrovae.inference.compare`) are generated from it. Two switches act on any
model/guide through Pyro effect handlers (:mod:`pyrovae.inference.handlers`), never through the
model:
``score_function=True`` (the guide's draws are not reparameterised; refused where the
gradient needs the path: ``supports_score_function = False``) and :meth:`set_kl_weight`
(beta times every latent site's log-density: the beta-VAE objective, KL warm-up).

The families register their names in :data:`ESTIMATORS`: ``trace``, ``tracegraph``,
and ``analytic`` in :mod:`pyrovae.inference.trace_elbo`; ``renyi``, ``iwae``
and ``iwae_dreg`` in :mod:`pyrovae.inference.importance`. :mod:`pyrovae.inference.estimators`
imports them all. New estimators plug in by registering a name in :data:`ESTIMATORS`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass

import pyro.infer
import torch

from pyrovae.components.registry import Registry
from pyrovae.components.rng import forked_rng
from pyrovae.components.validation import check_int
from pyrovae.inference.handlers import HandledELBO, KLWeightMessenger, ScoreFunctionMessenger

ESTIMATORS: Registry = Registry("estimator")


@dataclass(frozen=True)
class EstimatorAxes:
    """An estimator's place on the axes of a variational loss (TFP's vocabulary).

    Attributes:
        divergence: ``"KL"`` (the ELBO) or ``"Renyi"`` (the variational Renyi bound).
        alpha: Renyi order (1 is the KL / ELBO, 0 the IWAE bound).
        particles: K, the draws z_k ~ Q(z|X) per datum and step.
        importance_weighted: the bound is log (1/K sum_k w_k^(1-alpha)) / (1 - alpha)
            (a bound on log p(x) that tightens with K), not the average of K ELBOs.
        kl: ``"sampled"`` (log q - log p at the draws) or ``"analytic"`` (closed form).
        gradient: ``"pathwise"`` (reparameterised), ``"score function"`` (REINFORCE) or
            ``"doubly reparameterised"`` (DReG, Tucker et al. 2019).
        rao_blackwell: what the score-function term conditions on: ``"plates"``
            (per-datum), ``"dependency graph"`` (TraceGraph), ``"none"`` (no such term).
    """

    divergence: str = "KL"
    alpha: float = 1.0
    particles: int = 1
    importance_weighted: bool = False
    kl: str = "sampled"
    gradient: str = "pathwise"
    rao_blackwell: str = "plates"

    def row(self) -> dict:
        """The axes as a flat dict (a table row)."""
        return dataclasses.asdict(self)


class Estimator:
    """Base class: particles, handlers, Pyro's trace machinery, and the sync-free loss.

    Args:
        num_particles: number of Monte-Carlo draws per datum and step (K >= 1).
        vectorize_particles: draw the K particles in one vectorised pass (an extra plate on
            the left) instead of a Python loop.
        score_function: make the guide's latent draws non-reparameterised (see the module
            docstring); ``ValueError`` where the estimator needs the path.
    """

    pyro_class: type = pyro.infer.Trace_ELBO
    AXES = EstimatorAxes()
    supports_score_function = True
    capturable = True  # a sync-free loss: the fast step may be captured in a CUDA graph

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = False,
                 score_function: bool = False):
        check_int(num_particles, "particles")
        if not isinstance(score_function, bool):
            raise TypeError(f"score_function must be True or False, got {score_function!r}")
        if score_function and not self.supports_score_function:
            raise ValueError(f"score_function=True is not available with estimator "
                             f"{self.name!r}: its gradient needs the reparameterised path; "
                             f"use one of {', '.join(score_function_estimators())}")
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.score_function = score_function
        self.kl_weight: torch.Tensor | None = None  # beta, when set_kl_weight was called
        self._elbo = self.new_pyro_elbo()  # owns particle handling and trace generation

    @property
    def name(self) -> str:
        """The registered name of this class (its class name if unregistered)."""
        return next((n for n in ESTIMATORS if ESTIMATORS.get(n) is type(self)),
                    type(self).__name__)

    @property
    def axes(self) -> EstimatorAxes:
        """``AXES`` with this instance's particles and gradient filled in."""
        gradient = "score function" if self.score_function else self.AXES.gradient
        return dataclasses.replace(self.AXES, particles=self.num_particles, gradient=gradient)

    def new_pyro_elbo(self) -> pyro.infer.ELBO:
        """A fresh Pyro ELBO with this estimator's settings, without handlers."""
        return self.pyro_class(
            num_particles=self.num_particles, vectorize_particles=self.vectorize_particles
        )

    def pyro_elbo(self) -> pyro.infer.ELBO:
        """A fresh Pyro ELBO with this estimator's settings and handlers (for ``SVI``)."""
        elbo = self.new_pyro_elbo()
        return HandledELBO(elbo, self.wrap) if self.handled else elbo

    @property
    def handled(self) -> bool:
        """Whether :meth:`wrap` changes the model or guide."""
        return self.score_function or self.kl_weight is not None

    def wrap(self, model, guide):
        """``(model, guide)`` under this estimator's handlers (score function, KL weight)."""
        if self.score_function:
            guide = ScoreFunctionMessenger()(guide)
        if self.kl_weight is not None:
            model = KLWeightMessenger(self.kl_weight)(model)
            guide = KLWeightMessenger(self.kl_weight)(guide)
        return model, guide

    def set_kl_weight(self, beta: float, device: torch.device | str | None = None) -> None:
        """Weight every latent site's log-density by ``beta`` (>= 0) from now on.

        The first call creates the weight as a 0-dim tensor on ``device``; later calls update
        it in place, so a captured step sees the new value. Set it before the first step.
        """
        if self.kl_weight is None:
            self.kl_weight = torch.tensor(float(beta), device=device)
        else:
            self.kl_weight.fill_(float(beta))

    def without_kl_weight(self) -> Estimator:
        """A shallow copy of this estimator with no KL weight (the unweighted bound)."""
        unweighted = copy.copy(self)
        unweighted.kl_weight = None
        return unweighted

    def traces(self, model, guide, *args, **kwargs):
        """The (model trace, guide trace) pairs of one estimate (one, if vectorised)."""
        model, guide = self.wrap(model, guide)
        if self._elbo.vectorize_particles and self._elbo.max_plate_nesting == math.inf:
            guess_plate_nesting(self._elbo, model, guide, args, kwargs)
        return self._elbo._get_traces(model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Negative bound (summed over the batch) as a 0-dim tensor; no host-device sync."""
        loss = 0.0
        for model_trace, guide_trace in self.traces(model, guide, *args, **kwargs):
            loss = loss + self.particle_loss(model_trace, guide_trace)
        return loss

    def particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        """One trace pair's share of :meth:`differentiable_loss` (divided by K)."""
        elbo, surrogate = self.particle_elbo(model_trace, guide_trace)
        return -surrogate_value(elbo, surrogate) / self.num_particles

    def particle_elbo(self, model_trace, guide_trace) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO, surrogate ELBO) of one trace pair; the surrogate's gradient is the estimate."""
        raise NotImplementedError  # pragma: no cover - abstract


def guess_plate_nesting(elbo: pyro.infer.ELBO, model, guide, args, kwargs) -> int:
    """Pyro's guess of ``elbo.max_plate_nesting`` (one run of guide and model, as Pyro does
    on first use), without its INFO log line, on a forked RNG: the guess draws, and must not
    move the training stream (a resumed run would draw it again). Sets and returns it."""
    logger = logging.getLogger("pyro.infer.elbo")
    level = logger.level
    logger.setLevel(logging.WARNING)
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), "cpu")
    try:
        with forked_rng(device):
            elbo._guess_max_plate_nesting(model, guide, args, kwargs)
    finally:
        logger.setLevel(level)
    return elbo.max_plate_nesting


def surrogate_value(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is ``surrogate``'s (no sync).

    ``value``'s own graph is cut, as Pyro's ``torch_item`` does, or pathwise terms would
    count twice.
    """
    return value.detach() + (surrogate - surrogate.detach())


def score_function_estimators() -> list[str]:
    """The registered estimators that accept ``score_function=True``."""
    return [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).supports_score_function]
