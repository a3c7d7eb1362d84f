"""Samples and reconstructions of any model/guide pair, read from its observed site.

A user's Pyro model need not offer ``sample`` or ``reconstruct`` methods: running it shows
what it generates. The *data site* is the model's observed sample site that holds the data
(the only observed site, or the one with as many values as the data). Then

- :func:`prior_means`: the data site's distribution mean ``E[X | z]`` with every latent
  drawn from the model's own prior (the model run on a batch, unconditioned on its latents:
  the batch only sets how many and fills any extra arguments);
- :func:`reconstruction_means`: the same mean with the latents drawn from the guide given X.

Both return tensors shaped like the data, ``(N, *data_shape)``, under ``torch.no_grad()``.
A model can generate when its data site's distribution has a ``mean`` (Bernoulli, Normal,
Beta, ... and ``.to_event`` of them); otherwise a ``ValueError`` says what is missing.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from pyrovae.inference.pair import Batch, ModelGuidePair, as_args, take


def data_site(model_trace, x: torch.Tensor) -> dict:
    """The observed site holding ``x``: the only observed one, or the one whose value has
    ``x.numel()`` entries; ``ValueError`` naming the candidates otherwise."""
    observed = [site for site in model_trace.nodes.values()
                if site["type"] == "sample" and site["is_observed"]]
    if len(observed) == 1:
        return observed[0]
    matching = [site for site in observed if site["value"].numel() == x.numel()]
    if len(matching) == 1:
        return matching[0]
    names = ", ".join(repr(site["name"]) for site in observed) or "none"
    raise ValueError(f"cannot tell which observed site of the model holds the data "
                     f"(observed sites: {names}; {x.numel()} data values)")


def _site_mean(site: dict, x: torch.Tensor) -> torch.Tensor:
    try:
        mean = site["fn"].mean
    except NotImplementedError:
        raise ValueError(f"the model's data site {site['name']!r} "
                         f"({type(site['fn']).__name__}) has no mean, so pyrovae cannot draw "
                         "its samples or reconstructions") from None
    return mean.reshape(x.shape)


@torch.no_grad()
def prior_means(pair: ModelGuidePair, batch: Batch) -> torch.Tensor:
    """E[X | z], z ~ P(z), one draw per datum of ``batch``; shaped like its data."""
    args = as_args(batch)
    with poutine.block():  # hidden from any handler around the caller
        trace = poutine.trace(pair.model).get_trace(*args)
    return _site_mean(data_site(trace, args[0]), args[0])


@torch.no_grad()
def reconstruction_means(pair: ModelGuidePair, batch: Batch) -> torch.Tensor:
    """E[X | z], z ~ Q(z|X), one draw per datum of ``batch``; shaped like its data."""
    args = as_args(batch)
    with poutine.block():
        guide_trace = poutine.trace(pair.guide).get_trace(*args)
        trace = poutine.trace(poutine.replay(pair.model, trace=guide_trace)).get_trace(*args)
    return _site_mean(data_site(trace, args[0]), args[0])


class Generator:
    """``sample(n)`` and ``reconstruct(x)`` for any pair, as the figures call them.

    Args:
        pair: the model/guide pair.
        examples: data ``(M, ...)``, or a tuple of the model's tensor arguments, to run the
            model on for samples (cycled when n > M); only their number and any extra
            arguments (a condition) matter.
    """

    def __init__(self, pair: ModelGuidePair, examples: Batch):
        self.pair, self.examples = pair, as_args(examples)

    def sample(self, n: int) -> torch.Tensor:
        first = self.examples[0]
        index = torch.arange(n, device=first.device) % len(first)
        return prior_means(self.pair, take(self.examples, index))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruction_means(self.pair, x)
