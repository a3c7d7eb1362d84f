"""The conditional VAE: tasks, masks, model/guide match, the learned prior's KL, training."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.util import check_model_guide_match
from reference import monte_carlo_kl

from pyrovae.components.data import load_dataset
from pyrovae.components.guides import GUIDES
from pyrovae.components.priors import PRIORS
from pyrovae.inference.estimators import build_estimator
from pyrovae.inference.kl import closed_form_kl
from pyrovae.models.conditioning import CONDITIONS, build_condition, pack, unpack
from pyrovae.models.cvae import CVAE, PackedCVAE, Regressor, regressor_nll
from pyrovae.training.steppers import FastStepper
from pyrovae.training.sync_guard import SyncGuard
from pyrovae.training.trainer import Trainer

PIXEL_TASKS = ("quadrant", "half")


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits, statically binarised (seed 0): images and labels."""
    data = load_dataset("digits")
    generator = torch.Generator().manual_seed(0)
    return (torch.bernoulli(data.train_x, generator=generator), data.train_y,
            torch.bernoulli(data.test_x, generator=generator), data.test_y)


# Doersch's fixed P(z|X) = N(0, I), and the learned prior network N(m(X), diag s(X)^2)
FIXED, LEARNED = "standard_normal", "conditional_normal"


def make_cvae(condition, prior=FIXED, z_dim=3, hidden=(32,), guide="diagonal"):
    return CVAE(condition.x_dim, condition.y_dim, z_dim=z_dim, hidden=hidden,
                likelihood="bernoulli", prior=prior, guide=guide, components=3)


def test_every_condition_and_prior_is_tested():
    assert set(CONDITIONS.names()) == {*PIXEL_TASKS, "label"}
    assert {FIXED, LEARNED} <= set(PRIORS.names())


@pytest.mark.parametrize("prior,guide", [(p, "diagonal") for p in PRIORS.names()]
                         + [(LEARNED, g) for g in GUIDES.names() if g != "diagonal"])
def test_every_prior_and_guide_gives_a_cvae_whose_model_and_guide_match(digits, prior, guide):
    """P(z|X) from any registered prior (unconditional ones ignore X; the VampPrior mixes
    Q(z|u_k, X)) and Q(z|X, Y) from any registered guide: Pyro's site check passes, P(z|X)
    has batch (B,) and changes with X where the prior is conditional, draws are finite."""
    images, labels = digits[0][:6], digits[1][:6]
    condition = build_condition("quadrant", images.shape[1:])
    x, y = condition.split(images, labels)
    cvae = make_cvae(condition, prior, guide=guide)
    pyro.set_rng_seed(0)
    check_model_guide_match(poutine.trace(cvae.model).get_trace(x, y),
                            poutine.trace(cvae.guide).get_trace(x, y))
    z = cvae.conditional_prior(x).sample()
    assert z.shape == (6, 3) and torch.isfinite(z).all()
    log_p = cvae.conditional_prior(x).log_prob(z)
    other = cvae.conditional_prior(x.flip(0)).log_prob(z)
    assert log_p.shape == (6,)
    depends = PRIORS.get(prior).needs_context or prior == "vamp"
    assert torch.equal(log_p, other) != depends
    assert cvae.predict(x, 4).shape == (4, 6, condition.y_dim)


@pytest.mark.parametrize("name,prior", list(itertools.product(CONDITIONS.names(),
                                                              (FIXED, LEARNED))))
def test_shapes_sites_and_model_guide_match(digits, name, prior):
    images, labels = digits[0][:5], digits[1][:5]
    condition = build_condition(name, images.shape[1:])
    x, y = condition.split(images, labels)
    expected = {"quadrant": (16, 48), "half": (32, 32), "label": (10, 64)}[name]
    assert (condition.x_dim, condition.y_dim) == expected
    assert x.shape == (5, expected[0]) and y.shape == (5, expected[1])
    cvae = make_cvae(condition, prior)
    guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    check_model_guide_match(model_trace, guide_trace)
    samples = {n for n, s in model_trace.nodes.items() if s["type"] == "sample"}
    assert samples == {"data", "z", "y"}  # X is an argument, never a site
    z, out = model_trace.nodes["z"], model_trace.nodes["y"]
    assert z["fn"].batch_shape == (5,) and z["fn"].event_shape == (3,)
    assert out["is_observed"] and out["fn"].batch_shape == (5,)
    assert out["fn"].event_shape == (expected[1],)
    assert cvae.predict(x, 4).shape == (4, 5, expected[1])
    assert condition.complete(images, cvae.predict(x, 4)).shape == (4, 5, 1, 8, 8)


def test_pack_round_trip_and_label_x_is_one_hot(digits):
    images, labels = digits[0][:7], digits[1][:7]
    condition = build_condition("label", images.shape[1:])
    x, y = condition.split(images, labels)
    assert torch.equal(x.argmax(1), labels) and torch.equal(x.sum(1), torch.ones(7))
    packed = pack(x, y)
    assert packed.shape == (7, 1, 1, 74)
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed, 10), (x, y)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        condition.split(images, labels + 10)


@pytest.mark.parametrize("name", PIXEL_TASKS)
def test_observed_pixels_never_enter_the_likelihood(digits, name):
    """d log P(Y|z, X) / d image is exactly zero on every observed pixel (X held fixed)."""
    images = digits[0][:6].clone().requires_grad_(True)
    condition = build_condition(name, images.shape[1:])
    x, _ = condition.split(images.detach(), digits[1][:6])
    _, y = condition.split(images, digits[1][:6])
    cvae = make_cvae(condition)
    z = torch.randn(6, 3)
    log_p = cvae.output(z, x).log_prob(y).sum()
    (grad,) = torch.autograd.grad(log_p, images)
    flat = grad.reshape(6, -1)
    assert torch.all(flat[:, condition.observed_index] == 0)
    assert torch.all(flat[:, condition.modelled_index].abs().sum(0) > 0)
    assert sorted(torch.cat([condition.observed_index, condition.modelled_index]).tolist()) \
        == list(range(64))


@pytest.mark.parametrize("name", PIXEL_TASKS)
def test_completions_keep_the_observed_pixels(digits, name):
    images, labels = digits[0][:6], digits[1][:6]
    condition = build_condition(name, images.shape[1:])
    x, _ = condition.split(images, labels)
    completed = condition.complete(images, make_cvae(condition).predict(x, 5))  # (5, 6, ...)
    observed = condition.observed().expand(5, 6, 1, 8, 8)
    assert torch.equal(completed[observed], images.expand(5, 6, 1, 8, 8)[observed])
    assert not torch.equal(completed[~observed], images.expand(5, 6, 1, 8, 8)[~observed])
    shown = condition.show_input(images)
    assert torch.all(shown[~observed[0]] == 0.5)


def test_learned_prior_kl_is_analytic_and_matches_monte_carlo(digits):
    """Both Q(z|X, Y) and P(z|X) are diagonal Gaussians: the closed-form KL used by the
    analytic estimator equals the Monte-Carlo mean of log q - log p within 4 s.e."""
    images, labels = digits[0][:8], digits[1][:8]
    condition = build_condition("quadrant", images.shape[1:])
    x, y = condition.split(images, labels)
    cvae = make_cvae(condition, LEARNED)
    with torch.no_grad():  # move P(z|X) off N(0, I) so the KL is not the fixed prior's
        for p in cvae.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
        q, p = cvae.posterior(x, y), cvae.conditional_prior(x)
        exact = closed_form_kl(q, p)
        mc = monte_carlo_kl(q, p, 20000)
    assert exact.shape == (8,) and torch.all(exact > 0)
    assert torch.all((exact - mc.value).abs() < 4 * mc.stderr), (exact, mc.value, mc.stderr)
    # the analytic estimator scores the model/guide pair with exactly that KL
    packed = PackedCVAE(cvae)
    batch = pack(x, y)
    pyro.set_rng_seed(5)
    elbo = -build_estimator("analytic").differentiable_loss(packed.model, packed.guide, batch)
    pyro.set_rng_seed(5)
    z = poutine.trace(packed.guide).get_trace(batch).nodes["z"]["value"]
    expected = cvae.output(z, x).log_prob(y).sum() - exact.sum()
    assert torch.allclose(elbo, expected, rtol=1e-5)


@pytest.mark.parametrize("prior", PRIORS.names())
def test_fast_step_is_sync_free(digits, prior):
    images, labels = digits[0][:16], digits[1][:16]
    condition = build_condition("quadrant", images.shape[1:])
    packed = PackedCVAE(make_cvae(condition, prior))
    batch = pack(*condition.split(images, labels))
    for estimator in ("trace", "analytic", "iwae"):
        stepper = FastStepper(packed, build_estimator(estimator, 2), lr=1e-3, clip_norm=1.0)
        with SyncGuard():
            stepper.step(batch)
            stepper.step(batch)
        assert math.isfinite(stepper.take_epoch().loss_sum)


def per_datum_elbo(cvae, x, y, particles=20):
    """(N,) mean over ``particles`` draws z ~ Q of log P(y|z,x) + log P(z|x) - log Q(z|x,y)."""
    with torch.no_grad():
        q = cvae.posterior(x, y)
        z = q.sample((particles,))
        prior = cvae.conditional_prior(x)
        value = cvae.output(z, x).log_prob(y) + prior.log_prob(z) - q.log_prob(z)
    return value.mean(0).double()


@pytest.fixture(scope="module")
def trained(digits):
    """A CVAE trained 20 epochs on the digits half task (about 2 s), with its test data and
    its per-datum test ELBO before training; and the baseline trained alike."""
    train_x, train_y, test_x, test_y = digits
    condition = build_condition("half", train_x.shape[1:])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    cvae = make_cvae(condition, z_dim=4, hidden=(64,))
    x, y = condition.split(test_x, test_y)
    before = per_datum_elbo(cvae, x, y)
    data = pack(*condition.split(train_x, train_y))
    Trainer(PackedCVAE(cvae), "analytic", lr=3e-3).fit(data, 20, 64, progress=False)
    regressor = Regressor(condition.x_dim, condition.y_dim, hidden=(64,))
    history = Trainer(PackedCVAE(regressor), "trace", lr=3e-3).fit(data, 20, 64, progress=False)
    losses = [-epoch["train_elbo"] for epoch in history]
    return cvae, regressor, condition, x, y, before, losses


def test_short_training_raises_the_conditional_test_elbo(trained):
    cvae, _, _, x, y, before, _ = trained
    gain = per_datum_elbo(cvae, x, y) - before  # paired: the same 300 test data
    se = gain.std() / math.sqrt(len(gain))
    assert gain.mean() > 4 * se and gain.mean() > 5.0, (gain.mean(), se)


def test_draws_differ_for_one_input(trained):
    """The latent is used: Q(z|X, Y) departs from P(z|X) on test data (a collapsed model
    has KL 0), and the completions drawn for one input differ (a decoder that ignored z, or
    the regressor, gives the same image for every draw: spread 0). Seed 0 gives a KL of
    1.1 nats and spreads of at least 0.095 (mean 0.115) per pixel."""
    cvae, _, _, x, y, _, _ = trained
    with torch.no_grad():
        kl = closed_form_kl(cvae.posterior(x, y), cvae.conditional_prior(x))
    assert kl.mean() > 0.3, kl.mean()  # nats per datum
    draws = cvae.predict(x[:20], 50)  # (50, 20, 32) pixel probabilities
    spread = draws.std(0).mean(1)     # per input: mean over pixels of the sd across draws
    assert torch.all(spread > 0.02), spread


def test_baseline_nll_is_exact_and_trained(trained):
    cvae, regressor, condition, x, y, _, losses = trained
    assert losses[-1] < losses[0]
    nll = regressor_nll(regressor, pack(x, y))
    with torch.no_grad():
        expected = -torch.distributions.Bernoulli(logits=regressor.net(x)).log_prob(y).sum(1)
    assert torch.allclose(nll, expected.double(), rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(condition="quadrant"), dict(prior=LEARNED),
                                 dict(model="cvae"), dict(model="cvae", condition="corner"),
                                 dict(model="gan")])
def test_config_refuses_bad_model_options(bad):
    from pyrovae.runs.config import TrainConfig

    with pytest.raises(ValueError, match=r"model|condition|cvae|needs"):
        TrainConfig(**bad).validate()


def test_bad_shapes_are_refused(digits):
    condition = build_condition("quadrant", (1, 8, 8))
    cvae = make_cvae(condition)
    x, y = condition.split(digits[0][:4], digits[1][:4])
    with pytest.raises(ValueError, match=r"shapes \(batch, 16\) and \(batch, 48\)"):
        cvae.model(y, x)
    with pytest.raises(ValueError, match="built for images of shape"):
        condition.split(torch.zeros(4, 1, 28, 28), digits[1][:4])
    with pytest.raises(ValueError, match="image_shape must be"):
        build_condition("half", (8, 8))


def test_the_vaes_methods_take_the_context(digits):
    """A CVAE is a VAE with a context: sample, encode, decode and reconstruct take it, and
    without it they say so instead of failing inside a matrix product."""
    images, labels = digits[0][:4], digits[1][:4]
    condition = build_condition("half", images.shape[1:])
    x, y = condition.split(images, labels)
    cvae = make_cvae(condition, LEARNED)
    assert cvae.sample(3, context=x).shape == (3, 4, condition.y_dim)
    assert cvae.encode(y, context=x).shape == (4, 3)
    assert cvae.reconstruct(y, context=x).shape == y.shape
    for call in (lambda: cvae.sample(3), lambda: cvae.decode(torch.zeros(4, 3)),
                 lambda: cvae.encode(y)):
        with pytest.raises(ValueError, match="context"):
            call()
