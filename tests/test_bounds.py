"""Every bound against the linear-Gaussian ground truth (exact log p(x)), and against Pyro.

Statistical checks compare Monte-Carlo means with exact values, or two independent means with
each other, by z = difference / s.e., and fail when |z| > Z_LIMIT = 4.5: a two-sided
false-failure rate of 6.8e-6 per comparison for normal means (about 1.2e-5 for Student's t
with the 199 degrees of freedom of DRAWS = 200). Gradients compare m elements at once and fail above
the Bonferroni limit t(1e-5 / (2 m)): a family-wise false-failure rate <= 1e-5. Seeds are
fixed (conftest, and ``pyro.set_rng_seed`` here), so every run draws the same numbers.
"""

import pyro
import pytest
import torch

from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.inference.importance import log_weights, particles_first, renyi_bound
from pyrovae.inference.statistics import Moments, parameter_groups, student_t_quantile
from pyrovae.models.vae import VAE
from pyrovae.training.sync_guard import SyncGuard
from pyrovae.training.trainer import FastStepper

Z_LIMIT = 4.5
DRAWS = 200


def gradient_moments(vae, x, estimator, draws: int = DRAWS) -> dict[str, Moments]:
    """Moments of the gradient of the bound (minus the loss), per parameter group."""
    groups = parameter_groups(vae)
    params = [p for group in groups.values() for p in group]
    moments = {name: Moments() for name in groups}
    for _ in range(draws):
        loss = estimator.differentiable_loss(vae.model, vae.guide, x)
        grads = iter(torch.autograd.grad(-loss, params, allow_unused=True))
        for name, group in groups.items():
            moments[name].add(torch.cat([
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip((next(grads) for _ in group), group)]))
    return moments


def assert_same_mean(a: dict[str, Moments], b: dict[str, Moments | torch.Tensor]) -> None:
    """Two gradient means (or one mean and an exact gradient) agree, element by element."""
    elements = sum(m.mean.numel() for m in a.values())
    limit = student_t_quantile(1e-5 / (2 * elements), DRAWS - 1)
    for group, moments in a.items():
        other = b[group]
        exact = isinstance(other, torch.Tensor)
        mean_b = other if exact else other.mean
        se2 = moments.se.square() + (0.0 if exact else other.se.square())
        z = (moments.mean - mean_b) / (se2.sqrt() + 1e-12)
        assert z.abs().max() < limit, (group, z.abs().max())


def exact_gradients(vae, value: torch.Tensor) -> dict[str, torch.Tensor]:
    groups = parameter_groups(vae)
    params = [p for group in groups.values() for p in group]
    grads = iter(torch.autograd.grad(value, params))
    return {name: torch.cat([next(grads).reshape(-1) for _ in group])
            for name, group in groups.items()}


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_with_the_exact_posterior_every_bound_equals_log_px(linear_gaussian, name):
    """log p(x, z) - log q(z) = log p(x) for every z: sampled-KL bounds are exact on every
    draw, whatever K and alpha; analytic-KL ones keep the spread of log p(x|z), exact in mean."""
    vae, x = linear_gaussian
    vae.set_posterior_guide_()
    log_px = vae.log_marginal(x).sum().detach()
    estimator = build_estimator(name, 3)
    if estimator.axes.kl == "sampled":
        for _ in range(3):
            value = -estimator.differentiable_loss(vae.model, vae.guide, x)
            torch.testing.assert_close(value.detach(), log_px, rtol=0, atol=1e-9)
        return
    values = torch.stack([-estimator.differentiable_loss(vae.model, vae.guide, x).detach()
                          for _ in range(DRAWS)])
    assert abs(values.mean() - log_px) < Z_LIMIT * values.std() / DRAWS ** 0.5


def test_dreg_gives_the_exact_posterior_a_zero_guide_gradient(linear_gaussian):
    """At the posterior d log w / d z = 0, so DReG's guide gradient vanishes on every draw;
    IWAE's keeps the score term -d log q / d phi, zero only in expectation."""
    vae, x = linear_gaussian
    vae.set_posterior_guide_()
    for name, zero in (("iwae_dreg", True), ("iwae", False)):
        grads = gradient_moments(vae, x, build_estimator(name, 5), draws=20)
        assert (grads["encoder"].var.max() < 1e-20) == zero, name
        torch.testing.assert_close(grads["encoder"].mean,
                                   torch.zeros_like(grads["encoder"].mean),
                                   rtol=0, atol=Z_LIMIT * float(grads["encoder"].se.max()) + 1e-9)


def test_dreg_mean_gradient_equals_the_iwae_gradient(linear_gaussian):
    vae, x = linear_gaussian
    pyro.set_rng_seed(1)
    iwae = gradient_moments(vae, x, build_estimator("iwae", 5))
    dreg = gradient_moments(vae, x, build_estimator("iwae_dreg", 5))
    assert_same_mean(dreg, iwae)
    # and a real difference in spread: DReG drops the guide's score term
    assert dreg["encoder"].var.sum() < iwae["encoder"].var.sum()


@pytest.mark.parametrize("name,particles", [
    ("trace", 1), ("tracegraph", 1), pytest.param("iwae", 4, marks=pytest.mark.slow),
    pytest.param("renyi", 4, marks=pytest.mark.slow)])
def test_score_function_and_pathwise_mean_gradients_agree(linear_gaussian, name, particles):
    """Same model, same bound: the score-function gradient (the guide's draw made
    non-reparameterised by the handler) has the pathwise gradient's mean (the exact ELBO
    gradient for K = 1), and a larger spread. (The importance-weighted cases take ~5 s each
    on a quiet machine, three times that on a busy one: marked slow.)"""
    vae, x = linear_gaussian
    pyro.set_rng_seed(2)
    score = gradient_moments(vae, x, build_estimator(name, particles, score_function=True))
    pathwise = gradient_moments(vae, x, build_estimator(name, particles))
    if particles == 1:
        assert_same_mean(score, exact_gradients(vae, vae.exact_elbo(x).sum()))
    assert_same_mean(score, pathwise)
    assert score["encoder"].var.sum() > 2 * pathwise["encoder"].var.sum()


def test_renyi_bounds_fall_as_alpha_rises_on_every_draw(linear_gaussian):
    """Power means: for alpha < beta, L_alpha,K >= L_beta,K on every draw, the ELBO
    (alpha -> 1, the mean of log w) between alpha = 0.5 and alpha = 2; float64, exact."""
    vae, x = linear_gaussian
    estimator = build_estimator("iwae", 7)
    for _ in range(20):
        model_trace, guide_trace = estimator.one_trace(vae.model, vae.guide, x)
        log_w = particles_first(log_weights(model_trace, guide_trace), 7).detach()
        bounds = [renyi_bound(log_w, alpha) for alpha in (-2.0, -0.5, 0.0, 0.5)]
        bounds += [log_w.mean(0)] + [renyi_bound(log_w, alpha) for alpha in (2.0, 5.0)]
        for upper, lower in zip(bounds, bounds[1:]):
            assert (upper - lower >= -1e-12).all()


def test_renyi_bounds_are_below_log_px_for_alpha_in_0_1_and_tighten_towards_alpha_0(
        linear_gaussian):
    vae, x = linear_gaussian
    log_px = float(vae.log_marginal(x).sum().detach())
    means = {}
    for alpha in (0.0, 0.5):
        estimator = build_estimator("renyi", 5, alpha=alpha)
        values = torch.stack([-estimator.differentiable_loss(vae.model, vae.guide, x).detach()
                              for _ in range(DRAWS)])
        se = float(values.std()) / DRAWS ** 0.5
        assert values.mean() - log_px < Z_LIMIT * se, alpha
        means[alpha] = (float(values.mean()), se)
    (m0, s0), (m5, s5) = means[0.0], means[0.5]
    assert m0 - m5 > Z_LIMIT * (s0 ** 2 + s5 ** 2) ** 0.5


@pytest.mark.parametrize("name,particles,options", [
    ("iwae", 5, {}), ("renyi", 4, {"alpha": 0.5}), ("renyi", 3, {"alpha": 2.0}),
    ("renyi", 1, {"alpha": -1.0}), ("tracegraph", 2, {})])
def test_loss_and_gradient_equal_pyros_on_a_fixed_draw(tiny_images, name, particles, options):
    """Pyro's RenyiELBO / TraceGraph_ELBO (vectorised particles) and our sync-free losses
    give the same value and gradient on the same draw, in float64."""
    _, binary = tiny_images
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,), likelihood="bernoulli").double()
    x = binary[:6].double()
    ours = build_estimator(name, particles, **options)
    theirs = ours.pyro_elbo()
    for elbo in (ours, theirs):  # each guesses its plate nesting on first use (Pyro's draws)
        elbo.loss(vae.model, vae.guide, x) if elbo is theirs else \
            elbo.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    loss = ours.differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, list(vae.parameters()))
    pyro.set_rng_seed(3)
    expected = theirs.loss_and_grads(vae.model, vae.guide, x)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    for mine, pyros in zip(grads, vae.parameters()):
        torch.testing.assert_close(mine, pyros.grad, rtol=1e-10, atol=1e-12)


def _accepts_score_function(name: str) -> bool:
    return ESTIMATORS.get(name).supports_score_function


@pytest.mark.parametrize("name,score_function", [
    (n, sf) for n in ESTIMATORS.names() for sf in (False, True)
    if not sf or _accepts_score_function(n)])
def test_multi_particle_and_score_function_steps_make_no_host_device_sync(
        tiny_images, name, score_function):
    """With K = 4 vectorised particles (and the score-function switch) a whole fast step
    passes the sync guard, like the one-particle steps of test_estimators."""
    _, binary = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood="bernoulli")
    estimator = build_estimator(name, 4, score_function=score_function)
    stepper = FastStepper(vae, estimator, lr=1e-3, clip_norm=1.0)
    stepper.step(binary[:8])  # Pyro guesses the plate nesting on the first call
    with SyncGuard():
        stepper.step(binary[:8])
        stepper.step(binary[:8])
    assert stepper.take_epoch().loss_sum > 0
