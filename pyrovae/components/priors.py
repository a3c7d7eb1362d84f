"""Priors P(z): ``PyroModule``s that return a distribution over the latent code.

The protocol (see ``../DESIGN.md``): a prior has ``z_dim`` and ``forward(batch_shape)``
returning a ``pyro.distributions.Distribution`` with batch shape ``batch_shape`` and event
shape ``(z_dim,)``. New priors plug in by registering a name in :data:`PRIORS`; their
constructor takes ``z_dim`` as its one positional argument and keyword options with defaults
(:func:`build_prior` passes each prior only the options it declares).

A prior defined through the rest of the model (the VampPrior needs the guide) takes what it
needs in :meth:`Prior.attach`, which the owning :class:`~pyrovae.models.vae.VAE` calls once when
its networks and guide exist; the VAE never branches on which prior it holds.

A model with a context C (the conditional VAE's X) asks for P(z|C) with
``prior.condition(context)``, as Pyro's ``ConditionalDistribution.condition`` does: a
callable of the batch shape, like the prior itself. Unconditional priors return themselves
(P(z|C) = P(z), Doersch's choice for his CVAE); ``conditional_normal`` is a prior network
N(m(C), diag s(C)^2); the VampPrior mixes the guide's posteriors Q(z|u_k, C) at its
pseudo-inputs, so it follows the context too.

Registered: ``standard_normal`` (Doersch's N(0, I)), ``diagonal_normal`` (learnable mean and
scale), ``mixture`` (K learnable diagonal Gaussians), ``vamp`` (VampPrior, Tomczak & Welling
2018), ``flow`` (N(0, I) pushed through learnable affine autoregressive steps) and
``conditional_normal`` (a prior network on the context; needs one). The KL to a
diagonal-Gaussian guide has a closed form for ``standard_normal``, ``diagonal_normal`` and
``conditional_normal``; the analytic estimators fall back to Monte Carlo for the others
(``pyrovae check-kl`` says which).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae.components.flows import FlowDistribution, flow_step, made
from pyrovae.components.networks import Encoder
from pyrovae.components.registry import Registry
from pyrovae.components.validation import check_int

PRIORS: Registry = Registry("prior", options="model components")


class Prior(PyroModule):
    """Base class of priors over a ``z_dim``-dimensional latent code.

    ``needs_context``: True for a prior that exists only as P(z|C) (it needs a model with
    a context, such as the cvae).
    """

    needs_context = False

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = check_int(z_dim, "z_dim")

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        raise NotImplementedError  # pragma: no cover - abstract

    def condition(self, context: torch.Tensor):
        """P(z|C) for a context ``(B, context_dim)``: a callable ``batch_shape ->
        Distribution``. Here P(z|C) = P(z): the prior itself, whatever the context."""
        return self

    def attach(self, vae) -> None:
        """Called once by the VAE that owns this prior, after its networks and guide exist.

        Default: nothing. Keep references to the VAE out of the module tree (a plain
        attribute holding a bound method, not a submodule) so parameters are not shared twice.
        """


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    """P(z) = N(0, I), Doersch's prior.

    ``forward(batch_shape)`` -> ``Normal(0, 1)`` with batch shape ``batch_shape``, event
    shape ``(z_dim,)``. Its zeros and ones are buffers, so they follow ``.to(device)``.
    """

    def __init__(self, z_dim: int):
        super().__init__(z_dim)
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return base.expand(torch.Size(batch_shape))


@PRIORS.register("diagonal_normal")
class DiagonalNormal(Prior):
    """P(z) = N(m, diag s^2) with learnable m and log s, starting at N(0, I).

    The KL to the diagonal-Gaussian guide stays in closed form
    (:func:`pyrovae.inference.kl.kl_diag_normal`).
    """

    def __init__(self, z_dim: int):
        super().__init__(z_dim)
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        return base.expand(torch.Size(batch_shape))


class Mixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` that broadcasts a value to every component before scoring it.

        log p(z) = logsumexp_k [log w_k + log p_k(z)]

    Torch's version hands the components a value of shape ``(..., 1, z_dim)`` and leaves the
    broadcasting to them; a conditional flow (the flow guide's posteriors in a VampPrior)
    cannot, so the value is expanded to ``(..., K, z_dim)`` first. Same numbers otherwise.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = self._pad(value)
        events = len(self.event_shape)
        batch = torch.broadcast_shapes(value.shape[:value.dim() - events],
                                       self.component_distribution.batch_shape)
        log_probs = self.component_distribution.log_prob(value.expand(batch + self.event_shape))
        log_weights = torch.log_softmax(self.mixture_distribution.logits, dim=-1)
        return torch.logsumexp(log_probs + log_weights, dim=-1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """P(z) = sum_k w_k N(z; m_k, diag s_k^2), K components, all learnable.

    Args:
        z_dim: latent dimension.
        components: K >= 1. Means start as N(0, I) draws, scales at 1, weights equal.
    """

    def __init__(self, z_dim: int, components: int = 10):
        super().__init__(z_dim)
        self.components = check_int(components, "components")
        self.locs = nn.Parameter(torch.randn(components, z_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, z_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        parts = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        mixture = Mixture(dist.Categorical(logits=self.logits), parts)
        return mixture.expand(torch.Size(batch_shape))


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior: P(z) = 1/K sum_k Q(z | u_k), the guide's posteriors at K pseudo-inputs.

    The pseudo-inputs u_k (shape ``(K, *data_shape)``, starting uniform in [0, 1]) are learned
    with the rest of the model; the components are whatever the VAE's guide returns (diagonal
    Gaussians, or flows), so the encoder's parameters get gradients through the prior too.

    Args:
        z_dim: latent dimension.
        components: K >= 1.

    Needs its VAE: :meth:`attach` (called by :class:`~pyrovae.models.vae.VAE`) creates the
    pseudo-inputs and keeps ``vae.guide_distribution``; used alone, ``forward`` raises
    ``RuntimeError``.
    """

    def __init__(self, z_dim: int, components: int = 10):
        super().__init__(z_dim)
        self.components = check_int(components, "components")
        self._posterior = None  # a bound method of the VAE, not a submodule (no cycle)

    def attach(self, vae) -> None:
        self.pseudo_inputs = nn.Parameter(torch.rand(self.components, *vae.data_shape))
        self._posterior = vae.guide_distribution

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        return self._mixture(None).expand(torch.Size(batch_shape))

    def condition(self, context: torch.Tensor):
        """P(z|C) = 1/K sum_k Q(z | u_k, C): batch ``(B,)`` for a context ``(B, c)``."""
        return lambda batch_shape=(): self._mixture(context).expand(torch.Size(batch_shape))

    def _mixture(self, context: torch.Tensor | None) -> dist.TorchDistribution:
        if self._posterior is None:
            raise RuntimeError("the VampPrior mixes the guide's posteriors: build it inside a "
                               "VAE (VAE(..., prior='vamp')), which calls prior.attach(vae)")
        inputs = self.pseudo_inputs
        if context is not None:  # every datum's context against every pseudo-input
            inputs = inputs.expand(len(context), *inputs.shape)        # (B, K, *data_shape)
            context = context.unsqueeze(-2).expand(-1, self.components, -1)  # (B, K, c)
        parts = self._posterior(inputs, context)  # batch (K,) or (B, K), event (z_dim,)
        weights = dist.Categorical(logits=self.pseudo_inputs.new_zeros(self.components))
        return Mixture(weights, parts)


@PRIORS.register("flow")
class FlowPrior(Prior):
    """P(z): N(0, I) pushed through ``flow_steps`` learnable affine autoregressive steps.

        z = T_K(... T_1(e)),  e ~ N(0, I),   T_k = A_k^-1,  A_k(u) = mu_k(u) + exp(s_k(u)) u

    Each A_k is a MADE step (:mod:`pyrovae.components.flows`), orders alternating, so log p(z)
    takes one network pass per step (log N(A(z)) + log|det dA/dz|, as in a masked
    autoregressive flow) and a draw takes z_dim passes per step (training only scores z;
    figures draw).

    Args:
        z_dim: latent dimension.
        flow_steps: K >= 1.
        flow_hidden: MADE hidden widths (each raised to z_dim if smaller).
    """

    def __init__(self, z_dim: int, flow_steps: int = 2, flow_hidden: tuple[int, ...] = (32,)):
        super().__init__(z_dim)
        steps = check_int(flow_steps, "flow_steps")
        self.nets = PyroModule[nn.ModuleList](
            [made(z_dim, flow_hidden, reverse=k % 2 == 1) for k in range(steps)])
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        steps = [flow_step(net).inv for net in self.nets]
        return FlowDistribution(base, steps).expand(torch.Size(batch_shape))


@PRIORS.register("conditional_normal")
class ConditionalNormal(Prior):
    """P(z|C) = N(m(C), diag s(C)^2): a prior network on the context C (the CVAE's "learned"
    prior; the encoder's architecture on C, ``s = softplus(.) + MIN_SCALE``).

    Args:
        z_dim: latent dimension.
        context_dim: size of the context C (>= 1: the prior needs one).
        hidden: the network's hidden widths; activation: its activation name.

    ``condition(context)`` -> callable: ``batch_shape`` ``(B,)`` -> batch ``(B,)``, event
    ``(z_dim,)``. The KL to a diagonal-Gaussian guide has a closed form.
    """

    needs_context = True

    def __init__(self, z_dim: int, context_dim: int = 0, hidden: tuple[int, ...] = (256,),
                 activation: str = "relu"):
        super().__init__(z_dim)
        if check_int(context_dim, "context_dim", minimum=0) < 1:
            raise ValueError(f"prior 'conditional_normal' is P(z|C) and needs a context "
                             f"(the cvae model kind); got context_dim {context_dim!r}")
        self.net = Encoder((context_dim,), hidden, z_dim, activation)

    def forward(self, batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
        raise ValueError("prior 'conditional_normal' is P(z|C): call prior.condition(context)")

    def condition(self, context: torch.Tensor):
        def given(batch_shape: tuple[int, ...] = ()) -> dist.TorchDistribution:
            return dist.Normal(*self.net(context)).to_event(1).expand(torch.Size(batch_shape))
        return given


def prior_names(context: bool = False) -> list[str]:
    """The registered priors a model can hold: with ``context=False`` (a model without a
    context, the vae) those that do not need one; with ``context=True`` all of them."""
    return [n for n in PRIORS.names() if context or not PRIORS.get(n).needs_context]


def build_prior(name: str, z_dim: int, **options) -> Prior:
    """Instantiate the prior ``name`` with the ``options`` its constructor accepts."""
    return PRIORS.build(name, z_dim, **options)
