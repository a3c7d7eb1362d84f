"""Importance-weighted bounds: the variational Renyi bound, IWAE, and IWAE with DReG.

With K particles z_k ~ Q(z|X) per datum and log-weights log w_k = log P(X, z_k) - log Q(z_k|X)
(shape ``(K, B)``: particles on the left, one column per datum),

    L_alpha,K = 1/(1 - alpha) log (1/K sum_k w_k^(1 - alpha))      (Li & Turner, 2016)

is a lower bound on log P(X) in expectation for alpha >= 0 that tightens as K grows; alpha = 0
is the IWAE bound (Burda et al., 2016), E[IWAE-K] <= E[IWAE-2K] <= log P(X), and alpha -> 1 the
ELBO. On any one draw L_alpha,K falls as alpha rises (the power-mean inequality).

Gradients, with normalised weights v_k = w_k^(1-alpha) / sum_j w_j^(1-alpha) (no gradient):

- pathwise:       sum_k v_k grad log w_k                         (z_k reparameterised);
- score function: sum_k v_k grad log w_k |z fixed + L grad sum_k log Q(z_k|X), the unbiased
  REINFORCE estimator of grad E[L] (per datum: L and the scores share the datum's column);
  Pyro's ``RenyiELBO`` uses alpha/(1-alpha) sum_k v_k grad log Q instead, the gradient of
  log E[w^(1-alpha)], which for alpha = 0 gives the encoder no gradient at all;
- doubly reparameterised (``iwae_dreg``, alpha = 0; Tucker et al., 2019): the model gets
  sum_k v_k grad log w_k, the guide sum_k v_k^2 (d log w_k / d z_k)(d z_k / d phi) with Q's
  parameters held fixed inside log Q: the score term, zero in expectation, is gone. Built
  on Pyro traces: log Q is scored by a detached copy of the guide's distribution, and a hook
  on each z_k multiplies the gradient flowing into it by v_k. With K = 1 it is the
  "sticking the landing" estimator (Roeder et al., 2017).

Every loss here is sync-free (vectorised particles in one pass, ``logsumexp`` over the particle
dim), so these estimators train on the fast path and can be CUDA-graph-captured.
"""

from __future__ import annotations

import dataclasses
import math

import pyro.infer
import torch
from pyro.distributions.util import detach, scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_item

from pyrovae.inference.elbo import (
    ESTIMATORS,
    Estimator,
    EstimatorAxes,
    surrogate_value,
)


def sum_plate_dims(tensor: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Sum ``tensor`` over those of the (negative) ``dims`` it has, keeping them as size 1."""
    dims = [d for d in dims if d >= -tensor.dim()]
    return tensor.sum(dims, keepdim=True) if dims else tensor


def site_log_prob(site: dict, scaled: bool = True) -> torch.Tensor:
    """A site's log-density: as Pyro stored it (``scaled``: times the subsample factor and
    any ``poutine.scale``), or only masked (the per-datum value, whatever the plates)."""
    if scaled:
        return site["log_prob"]
    return scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])


def log_weights(model_trace, guide_trace, scaled: bool = True, guide_log_prob=None
                ) -> torch.Tensor:
    """log w = sum of the model's sample sites' log P - sum of the guide's log Q.

    Plates not shared by every site are summed out (kept as size-1 dims), as Pyro's
    ``RenyiELBO`` does. ``guide_log_prob(site)`` replaces the guide sites' log-density.
    Shape: the shared plates' batch shape, e.g. ``(K, B)`` with K > 1 vectorised particles,
    ``(B,)`` with one.
    """
    dims = get_dependent_plate_dims(model_trace.nodes.values())
    score_q = guide_log_prob or (lambda site: site_log_prob(site, scaled))
    total = 0.0
    for trace, sign, score in ((model_trace, 1.0, lambda s: site_log_prob(s, scaled)),
                               (guide_trace, -1.0, score_q)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                total = total + sign * sum_plate_dims(score(site), dims)
    return total


def particles_first(tensor: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``tensor`` with the particle dim leftmost: Pyro adds none for a single particle."""
    return tensor.unsqueeze(0) if num_particles == 1 else tensor


def renyi_bound(log_w: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """L_alpha,K = log(1/K sum_k w_k^(1-alpha)) / (1-alpha) over dim 0 (the K particles).

    ``log_w``: shape ``(K, ...)``; returns shape ``(...)``, nats. alpha = 0: IWAE-K.
    """
    scaled = (1.0 - alpha) * log_w
    return (torch.logsumexp(scaled, 0) - math.log(log_w.shape[0])) / (1.0 - alpha)


def normalised_weights(log_w: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """v_k = w_k^(1-alpha) / sum_j w_j^(1-alpha) over dim 0, detached; shape of ``log_w``."""
    return torch.softmax((1.0 - alpha) * log_w.detach(), 0)


def check_alpha(alpha) -> float:
    """``alpha`` as a float; ``ValueError`` unless it is a finite number other than 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
            or not math.isfinite(alpha) or alpha == 1:
        raise ValueError(f"alpha must be a finite number other than 1 (alpha = 1 is the ELBO: "
                         f"use --elbo trace), got {alpha!r}")
    return float(alpha)


class EstimatorELBO(pyro.infer.ELBO):
    """An estimator's sync-free loss as a ``pyro.infer.ELBO``, for ``pyro.infer.SVI`` where
    Pyro has no ELBO with its gradient (DReG; the unbiased score-function Renyi gradient)."""

    def __init__(self, estimator: Estimator):
        super().__init__(num_particles=estimator.num_particles)
        self.estimator = estimator

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError  # traces come from the estimator

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.estimator.differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return torch_item(loss)


class ImportanceWeighted(Estimator):
    """Base of the importance-weighted bounds: K vectorised particles, order ``alpha``.

    Args:
        num_particles: K >= 1 (K = 1 gives the one-sample ELBO, whatever alpha).
        score_function: see :class:`~pyrovae.inference.elbo.Estimator`.
    """

    pyro_class = pyro.infer.RenyiELBO
    AXES = EstimatorAxes(divergence="Renyi", alpha=0.0, importance_weighted=True)
    alpha = 0.0

    def __init__(self, num_particles: int = 1, score_function: bool = False):
        super().__init__(num_particles, vectorize_particles=True, score_function=score_function)

    def new_pyro_elbo(self) -> pyro.infer.ELBO:
        return self.pyro_class(alpha=self.alpha, num_particles=self.num_particles,
                               vectorize_particles=True)

    def pyro_elbo(self) -> pyro.infer.ELBO:
        if self.score_function:  # Pyro's RenyiELBO has another score-function gradient
            return EstimatorELBO(self)
        return super().pyro_elbo()

    @property
    def axes(self) -> EstimatorAxes:
        return dataclasses.replace(super().axes, alpha=self.alpha)

    def one_trace(self, model, guide, *args, **kwargs):
        """The one vectorised (model trace, guide trace) pair of an estimate."""
        return next(iter(self.traces(model, guide, *args, **kwargs)))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self.one_trace(model, guide, *args, **kwargs)
        log_w = particles_first(log_weights(model_trace, guide_trace), self.num_particles)
        bound = renyi_bound(log_w.detach(), self.alpha)
        surrogate = (normalised_weights(log_w, self.alpha) * log_w).sum()
        dims = get_dependent_plate_dims(model_trace.nodes.values())
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            score = site["score_parts"].score_function
            if not is_identically_zero(score):  # REINFORCE: L times the datum's scores
                score = particles_first(sum_plate_dims(score, dims), self.num_particles)
                surrogate = surrogate + (bound * score.sum(0)).sum()
        return -surrogate_value(bound.sum(), surrogate)


@ESTIMATORS.register("renyi")
class RenyiBound(ImportanceWeighted):
    """Pyro's ``RenyiELBO``: the variational Renyi bound L_alpha,K (module docstring).

    Args:
        num_particles: K >= 1.
        alpha: the order, a finite number other than 1 (0: IWAE; in (0, 1): between the
            IWAE bound and the ELBO; > 1: below the ELBO; < 0: not a lower bound).
        score_function: see :class:`~pyrovae.inference.elbo.Estimator`.
    """

    def __init__(self, num_particles: int = 1, alpha: float = 0.5,
                 score_function: bool = False):
        self.alpha = check_alpha(alpha)
        super().__init__(num_particles, score_function=score_function)


@ESTIMATORS.register("iwae")
class IWAE(ImportanceWeighted):
    """The IWAE-K bound log (1/K sum_k w_k): Pyro's ``RenyiELBO`` with alpha = 0."""


@ESTIMATORS.register("iwae_dreg")
class IWAEDReG(IWAE):
    """The IWAE-K bound with the doubly reparameterised guide gradient (module docstring).

    The same value as ``iwae`` and, in expectation, the same gradient; the guide's gradient
    has no score term, so its signal-to-noise ratio does not fall as K grows. Needs a
    reparameterised guide. Pyro has no such ELBO: ``pyro_elbo()`` wraps this loss.
    """

    AXES = EstimatorAxes(divergence="Renyi", alpha=0.0, importance_weighted=True,
                         gradient="doubly reparameterised", rao_blackwell="none")
    supports_score_function = False

    def pyro_elbo(self) -> pyro.infer.ELBO:
        return EstimatorELBO(self)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        model_trace, guide_trace = self.one_trace(model, guide, *args, **kwargs)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and \
                    not is_identically_zero(site["score_parts"].score_function):
                raise ValueError(f"iwae_dreg needs reparameterised guide sites; site {name!r} "
                                 f"({type(site['fn']).__name__}) is not; use 'iwae'")
        log_w = particles_first(log_weights(model_trace, guide_trace, guide_log_prob=_stopped),
                                self.num_particles)
        weights = normalised_weights(log_w)
        if self.num_particles > 1:
            for name, site in guide_trace.nodes.items():
                if site["type"] == "sample" and site["value"].requires_grad:
                    site["value"].register_hook(_gradient_scaler(weights, site, name))
        surrogate = (weights * log_w).sum()
        return -surrogate_value(renyi_bound(log_w.detach()).sum(), surrogate)


def _stopped(site: dict) -> torch.Tensor:
    """log Q(z) with Q's parameters detached: the gradient reaches phi only through z."""
    return scale_and_mask(detach(site["fn"]).log_prob(site["value"]), site["scale"],
                          site["mask"])


def _gradient_scaler(weights: torch.Tensor, site: dict, name: str):
    """A hook multiplying the gradient of a site's value by its particle's weight v_k."""
    shaped = weights.reshape(weights.shape + (1,) * site["fn"].event_dim)
    value_shape = site["value"].shape
    fits = len(shaped.shape) <= len(value_shape) and all(
        w in (1, v) for w, v in zip(reversed(shaped.shape), reversed(value_shape)))
    if not fits:
        raise ValueError(f"iwae_dreg: guide site {name!r} of shape {tuple(value_shape)} does "
                         f"not lie in the plates of the weights {tuple(weights.shape)}")
    return lambda grad: grad * shaped
