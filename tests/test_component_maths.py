"""The maths of the components: reference log-densities, flows, mixtures, KL fallback, training.

Statistical test: two epochs must raise the test ELBO by more than Z_LIMIT standard errors of
the mean per-datum difference (paired over the 300 test digits, one draw each; fixed seeds,
so a run is deterministic). Z_LIMIT = 4.5 is a one-sided false-failure rate of 3.4e-6 under
the normal approximation, were the true improvement zero; here it is about 70 s.e.
"""

import copy
import math
from functools import partial

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from scipy import special, stats

from pyrovae.components.data import load_dataset
from pyrovae.components.flows import flow_step, made
from pyrovae.components.guides import GUIDES
from pyrovae.components.likelihoods import LIKELIHOODS, build_likelihood
from pyrovae.components.priors import PRIORS, prior_names
from pyrovae.inference.check_kl import kl_method
from pyrovae.inference.estimators import build_estimator
from pyrovae.models.vae import VAE
from pyrovae.training.sync_guard import HostSyncError, SyncGuard
from pyrovae.training.trainer import Trainer

Z_LIMIT = 4.5


def softplus(r):
    return np.logaddexp(0.0, r)


def continuous_bernoulli_logpdf(x, lam):
    """log C(lam) + x log lam + (1 - x) log(1 - lam), C = 2 artanh(1 - 2 lam) / (1 - 2 lam)."""
    log_norm = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    return log_norm + x * np.log(lam) + (1 - x) * np.log1p(-lam)


def discretized_logistic_logpmf(x, r, k=5):
    """PixelCNN++'s discretised logistic mixture from scipy's logistic CDF (survival function
    right of each component's mean, where the CDF's difference would lose digits)."""
    logits, loc, raw = (np.stack(r[i * k:(i + 1) * k]) for i in range(3))  # (k, ...) each
    scale = np.exp(-7 + softplus(raw + 7))
    c = 2 * x - 1
    upper = np.where(c > 1 - 1e-9, np.inf, c + 1 / 255)
    lower = np.where(c < -1 + 1e-9, -np.inf, c - 1 / 255)
    left = stats.logistic.cdf(upper, loc, scale) - stats.logistic.cdf(lower, loc, scale)
    right = stats.logistic.sf(lower, loc, scale) - stats.logistic.sf(upper, loc, scale)
    weights = special.softmax(logits, axis=0)
    return np.log((weights * np.where(c > loc, right, left)).sum(0))


#: name -> (x, raw params as a list of arrays) -> elementwise log-density, from scipy/numpy
REFERENCE = {
    "discretized_logistic": discretized_logistic_logpmf,
    "bernoulli": lambda x, r: stats.bernoulli.logpmf(x, special.expit(r[0])),
    "continuous_bernoulli": lambda x, r: continuous_bernoulli_logpdf(x, special.expit(r[0])),
    "gaussian": lambda x, r: stats.norm.logpdf(x, r[0], 0.1),
    "gaussian_learned": lambda x, r: stats.norm.logpdf(x, r[0], softplus(r[1]) + 1e-3),
    "laplace": lambda x, r: stats.laplace.logpdf(x, r[0], 0.1),
    "beta": lambda x, r: stats.beta.logpdf(np.clip(x, 1e-3, 1 - 1e-3),
                                           softplus(r[0]) + 1e-3, softplus(r[1]) + 1e-3),
}


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_log_prob_matches_a_reference(name):
    assert name in REFERENCE, f"add a scipy or numpy reference for likelihood {name!r}"
    likelihood = build_likelihood(name)
    generator = torch.Generator().manual_seed(0)
    k = likelihood.params_per_value
    raw = 2 * torch.randn(3, k * 6, generator=generator, dtype=torch.float64)
    x = torch.rand(3, 6, generator=generator, dtype=torch.float64)
    x[:, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # the boundaries of [0, 1]
    x = torch.bernoulli(x, generator=generator) if name == "bernoulli" else x
    x = torch.round(x * 255) / 255 if name == "discretized_logistic" else x  # 8-bit values
    ours = likelihood(raw, (6,)).log_prob(x)
    params = [p.numpy() for p in raw.reshape(3, k, 6).unbind(1)]
    expected = REFERENCE[name](x.numpy(), params).sum(-1)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_sync_free_inverse_inverts_the_step_and_equals_pyros():
    net = made(4, (16,), context_dim=3)
    context, x = torch.randn(5, 3), torch.randn(5, 4)
    y = flow_step(net, context)(x)
    with SyncGuard():
        ours = flow_step(net, context)._inverse(y)  # a fresh step: nothing cached
    pyros = ConditionalAffineAutoregressive(net).condition(context)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, pyros._inverse(y))
    with SyncGuard(), pytest.raises(HostSyncError):  # why pyrovae has its own inverse
        pyros._inverse(y)


def test_log_prob_of_a_flow_draw_keeps_its_gradient(tiny_images):
    """Torch's sample() caches a no-grad pair in the transforms; FlowDistribution's does not."""
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,), prior="flow", guide="flow")
    for distribution in (vae.prior((4,)), vae.posterior(tiny_images[0][:4])):
        log_prob = distribution.log_prob(distribution.sample())
        assert log_prob.requires_grad
        log_prob.sum().backward()
    for part in (vae.prior, vae.q):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_mixture_equals_torchs_mixture_same_family():
    mixture = PRIORS.get("mixture")(3, components=4)((5,))
    z = torch.randn(5, 3)
    torch.testing.assert_close(mixture.log_prob(z),
                               torch.distributions.MixtureSameFamily.log_prob(mixture, z))


@pytest.mark.parametrize("guide", GUIDES.names())
def test_vamp_prior_is_the_mean_of_the_guides_posteriors_at_its_pseudo_inputs(guide):
    vae = VAE((1, 3, 3), z_dim=2, hidden=(8,), prior=PRIORS.build("vamp", 2, components=3),
              guide=guide)
    z = torch.randn(6, 2)
    parts = [vae.posterior(vae.prior.pseudo_inputs[k:k + 1]).log_prob(z) for k in range(3)]
    expected = torch.logsumexp(torch.stack(parts), 0) - math.log(3)
    torch.testing.assert_close(vae.prior((6,)).log_prob(z), expected)


def test_vamp_prior_needs_its_vae_and_follows_a_deep_copy():
    with pytest.raises(RuntimeError, match="build it inside a VAE"):
        PRIORS.get("vamp")(2)(())
    vae = VAE((1, 3, 3), z_dim=2, hidden=(8,), prior="vamp")
    twin = copy.deepcopy(vae).double()
    assert twin.prior._posterior.__self__ is twin
    assert twin.prior((2,)).sample().dtype == torch.float64


@pytest.mark.parametrize("prior", prior_names())
@pytest.mark.parametrize("guide", GUIDES.names())
def test_kl_is_closed_form_where_registered_else_monte_carlo(tiny_images, prior, guide):
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,), prior=prior, guide=guide)
    x = tiny_images[0][:6]
    method = kl_method(vae, x)
    closed = prior in ("standard_normal", "diagonal_normal") and guide == "diagonal"
    assert method == "closed form" if closed else method.startswith("Monte Carlo (z: no closed")
    [(model_trace, guide_trace)] = build_estimator("trace").traces(vae.model, vae.guide, x)
    losses = {name: build_estimator(name).particle_loss(model_trace, guide_trace)
              for name in ("trace", "analytic")}
    assert torch.isclose(losses["analytic"], losses["trace"]) != closed  # fallback: the same


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@torch.no_grad()
def per_datum_elbo(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """log P(x|z) + log P(z) - log Q(z|x) at one draw z ~ Q(z|x) per datum, shape (N,)."""
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace.nodes["x"]["log_prob"] + model_trace.nodes["z"]["log_prob"] \
        - guide_trace.nodes["z"]["log_prob"]


@pytest.mark.parametrize("prior,guide", [(p, "diagonal") for p in prior_names()]
                         + [("standard_normal", g) for g in GUIDES.names() if g != "diagonal"])
def test_two_epochs_on_digits_raise_the_test_elbo(digits, prior, guide):
    pyro.set_rng_seed(0)
    vae = VAE(digits.image_shape, z_dim=2, hidden=(64,), prior=prior, guide=guide)
    before = per_datum_elbo(vae, digits.test_x)
    Trainer(vae, "trace", lr=3e-3).fit(digits.train_x, epochs=2, batch_size=64, progress=False)
    gain = per_datum_elbo(vae, digits.test_x) - before
    z = gain.mean() / (gain.std() / math.sqrt(len(gain)))
    print(f"{prior} {guide}: gain {float(gain.mean()):.1f} nats per datum, z = {float(z):.1f}")
    assert z > Z_LIMIT, (prior, guide, float(gain.mean()), float(z))


def test_unknown_names_list_the_known_ones():
    for registry, build in ((PRIORS, partial(PRIORS.build, "nope", 2)),
                            (LIKELIHOODS, partial(LIKELIHOODS.build, "nope")),
                            (GUIDES, partial(GUIDES.build, "nope", (1, 2, 2), 2))):
        with pytest.raises(ValueError, match=f"unknown {registry.kind} 'nope'; known: "
                                             f"{', '.join(registry.names())}"):
            build()
