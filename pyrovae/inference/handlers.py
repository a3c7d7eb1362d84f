"""Effect handlers that change how an estimator treats a model/guide, never the model itself.

Every estimator applies them around whatever model and guide it is given, so they work for any
prior, likelihood or guide registered in pyrovae:

- :class:`ScoreFunctionMessenger` (the ``--score-function`` switch): every latent sample site
  of the guide draws without reparameterisation, so the estimators fall back to their
  score-function (REINFORCE) gradient for it. The draw itself is unchanged in distribution:
  only its pathwise derivative is cut. Pyro reads ``fn.has_rsample`` to choose between the
  two; ``has_rsample_(False)`` cannot be set on ``Independent`` (a read-only property), so
  the handler wraps the site's distribution in :class:`NonReparameterized` instead.
- :class:`KLWeightMessenger` (``--beta``, ``--kl-warmup``): multiplies the log-probability of
  every latent sample site, in model and guide alike, by a weight beta, as ``poutine.scale``
  would the whole site. The ELBO becomes E_Q[log P(X|z)] - beta D[Q(z|X) || P(z)] (the
  beta-VAE objective) in every estimator, analytic KL included (it reads the guide site's
  scale). beta may be a 0-dim tensor updated in place between steps (no re-trace, and a
  captured CUDA graph sees the new value).
- :class:`HandledELBO`: a ``pyro.infer.ELBO`` whose model and guide run under such handlers,
  for ``pyro.infer.SVI``.

Observed sites and plate subsample sites are never touched.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


def is_latent(msg: dict) -> bool:
    """A sample site that is neither observed nor a plate's subsample site."""
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


class NonReparameterized(dist.TorchDistribution):
    """``base`` with its pathwise derivative cut: ``has_rsample = False``, same law.

    Sampling returns ``base.sample()`` (no gradient to the parameters); ``log_prob`` is
    ``base.log_prob`` (with its gradient), so Pyro's ``score_parts`` give the score-function
    term log q(z) and no entropy term. Shapes are ``base``'s.
    """

    has_rsample = False
    arg_constraints: dict = {}

    def __init__(self, base: dist.TorchDistribution):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance


class ScoreFunctionMessenger(Messenger):
    """Make every latent sample site non-reparameterised (apply it to the guide)."""

    def _pyro_sample(self, msg: dict) -> None:
        if is_latent(msg) and msg["fn"].has_rsample:
            msg["fn"] = NonReparameterized(msg["fn"])


class KLWeightMessenger(Messenger):
    """Scale the log-probability of every latent sample site by ``beta``.

    Args:
        beta: a number >= 0 or a 0-dim tensor (read when the site is scored, so an in-place
            update takes effect at the next trace). Unlike ``poutine.scale`` it accepts 0
            (the first epoch of a KL warm-up) and leaves observed sites alone.
    """

    def __init__(self, beta: float | torch.Tensor):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if is_latent(msg):
            msg["scale"] = self.beta * msg["scale"]


Wrap = Callable[[Callable, Callable], tuple[Callable, Callable]]


class HandledELBO(pyro.infer.ELBO):
    """A Pyro ELBO whose ``(model, guide)`` go through ``wrap`` on every call.

    ``wrap(model, guide) -> (model', guide')`` is consulted at call time, so handlers whose
    state changes between steps (a KL weight) are seen. ``pyro.infer.SVI`` takes it as its
    loss (it is an ``ELBO``): ``loss``, ``loss_and_grads`` and ``differentiable_loss`` are
    ``elbo``'s on the wrapped pair; every other attribute is ``elbo``'s.
    """

    def __init__(self, elbo: pyro.infer.ELBO, wrap: Wrap):  # no super(): attributes delegate
        self.elbo, self.wrap = elbo, wrap

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(*self.wrap(model, guide), args, kwargs)

    def loss(self, model, guide, *args, **kwargs):
        return self.elbo.loss(*self.wrap(model, guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self.elbo.loss_and_grads(*self.wrap(model, guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.elbo.differentiable_loss(*self.wrap(model, guide), *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.elbo, name)
