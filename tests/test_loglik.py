"""log P(X) estimators (pyrovae.inference.evaluation) against the linear-Gaussian ground truth.

Monte-Carlo checks use z = difference / s.e. and fail when |z| > Z_LIMIT = 4.5: a two-sided
false-failure rate of 6.8e-6 per comparison for normal means (the s.e. below come from
>= 300 independent estimates or from the delta method over >= 2,000 light-tailed weights,
where the normal approximation holds). Where a test makes m comparisons at once the rate is
at most m times that (m <= 16 here: < 1.1e-4). Seeds are fixed (conftest and per test).
"""

import math
import types

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyrovae.inference.evaluation import log_likelihood
from pyrovae.inference.handlers import KLWeightMessenger
from pyrovae.models.linear_gaussian import make_linear_gaussian

Z_LIMIT = 4.5


def widen(vae, factor: float = 1.5, shift: float = 0.3):
    """A guide near the posterior but wider than it (so the importance weights have finite
    variance and the delta-method s.e. holds): the posterior's scale times ``factor``, its
    mean moved by ``shift``."""
    vae.set_posterior_guide_()
    with torch.no_grad():
        vae.encoder.log_scale += math.log(factor)
        vae.encoder.linear.bias += shift
    return vae


def exact_log_px(vae, x) -> torch.Tensor:
    return vae.log_marginal(x).detach().double()


def test_elbo_below_iwae_k_below_iwae_2k_below_log_px(linear_gaussian):
    """E[ELBO] <= E[IWAE-k] <= E[IWAE-2k] <= log p(x), on 300 copies of the 8 data (one
    estimate each, the 2k draws extending the k draws: paired differences). With the
    fixture's random guide the gaps are nats wide, so each inequality must hold by more than
    Z_LIMIT s.e.; the one-draw ELBO estimate must match the exact ELBO."""
    vae, x = linear_gaussian
    copies, k = 300, 4
    results = log_likelihood(vae, x.repeat(copies, 1, 1, 1), [1, k, 2 * k], chunk=64)
    per_copy = [r.per_datum.reshape(copies, len(x)).sum(1) for r in results]
    elbo, iwae_k, iwae_2k = per_copy
    exact_elbo = float(vae.exact_elbo(x).sum().detach())
    assert abs(elbo.mean() - exact_elbo) < Z_LIMIT * elbo.std() / copies ** 0.5
    for lower, upper in ((elbo, iwae_k), (iwae_k, iwae_2k)):
        gain = upper - lower
        assert gain.mean() > Z_LIMIT * gain.std() / copies ** 0.5
    gap = float(exact_log_px(vae, x).sum()) - iwae_2k
    assert gap.mean() > Z_LIMIT * gap.std() / copies ** 0.5


def test_iwae_k_converges_to_log_px(linear_gaussian):
    """With k = 5,000 each datum's estimate is within Z_LIMIT Monte-Carlo s.e. (plus the
    bias se^2 / 2 of the log of a mean) of log p(x), and 10 times closer than the ELBO
    (measured: 40 times)."""
    vae, x = linear_gaussian
    widen(vae)
    result = log_likelihood(vae, x, 5000, chunk=1000)
    exact = exact_log_px(vae, x)
    error = (result.per_datum - exact).abs()
    se = result.per_datum_mc_se
    assert (error < Z_LIMIT * se + se.square() / 2).all(), (error, se)
    assert error.max() < (exact - vae.exact_elbo(x).detach()).min() / 10


def test_naive_estimator_converges_in_low_dimension(linear_gaussian):
    """z in 2-D: n = 20,000 draws from P(z) recover log p(x) within the tolerance above."""
    vae, x = linear_gaussian
    result = log_likelihood(vae, x, 20000, proposal="prior", chunk=5000)
    error = (result.per_datum - exact_log_px(vae, x)).abs()
    se = result.per_datum_mc_se
    assert (error < Z_LIMIT * se + se.square() / 2).all(), (error, se)


def test_naive_error_is_far_larger_than_importance_samplings_at_equal_n():
    """z in 6-D, n = k = 1,000, 30 independent estimates per datum: the naive estimator's
    spread (measured: 5 to 50 times, 14 on average) and its error (measured: 3.6 nats on
    average, against 0.005) dwarf importance sampling's."""
    vae, x = make_linear_gaussian(n=8, data_shape=(1, 4, 4), z_dim=6)
    widen(vae)
    copies = 30
    exact = exact_log_px(vae, x)
    spread, error = {}, {}
    for proposal in ("guide", "prior"):
        result = log_likelihood(vae, x.repeat(copies, 1, 1, 1), 1000, proposal, chunk=1000)
        estimates = result.per_datum.reshape(copies, len(x))
        spread[proposal] = estimates.std(0)
        error[proposal] = (exact - estimates.mean(0)).mean()
    assert (spread["prior"] > 3 * spread["guide"]).all()
    assert spread["prior"].mean() > 10 * spread["guide"].mean()
    assert error["prior"] > 1.0 > 10 * error["guide"]


def test_per_datum_estimates_do_not_depend_on_scaling_or_batch_size(linear_gaussian):
    """Pyro stores log-probs times the subsample factor / poutine.scale / a KL weight; the
    estimators read them unscaled, so a model scaled like a 1-in-12.5 subsample gives the same
    numbers on the same draws. Cut into batches of 1 or all 8, each datum's estimate is
    the same in distribution: |difference| < Z_LIMIT s.e. for each of the 8 data."""
    vae, x = linear_gaussian
    widen(vae)
    scaled = types.SimpleNamespace(
        model=poutine.scale(KLWeightMessenger(0.3)(vae.model), scale=12.5),
        guide=poutine.scale(KLWeightMessenger(0.3)(vae.guide), scale=12.5))
    results = []
    for pair in (vae, scaled):
        pyro.set_rng_seed(5)
        results.append(log_likelihood(pair, x, 300, chunk=100).per_datum)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)

    one, eight = (log_likelihood(vae, x, 2000, chunk=500, batch_size=b) for b in (1, 8))
    z = (one.per_datum - eight.per_datum) / (one.per_datum_mc_se.square()
                                             + eight.per_datum_mc_se.square()).sqrt()
    assert z.abs().max() < Z_LIMIT, z


def test_a_list_of_k_reuses_the_draws_and_reports_units_and_standard_errors(linear_gaussian):
    vae, x = linear_gaussian
    pyro.set_rng_seed(6)
    first, last = log_likelihood(vae, x, [10, 100], chunk=64)
    pyro.set_rng_seed(6)
    alone = log_likelihood(vae, x, 10, chunk=64)
    torch.testing.assert_close(first.per_datum, alone.per_datum)  # the first 10 of the 100
    assert last.samples == 100 and last.proposal == "guide" and last.dims == 6
    summary = last.summary()
    assert summary["test_nll"] == pytest.approx(-float(last.per_datum.mean()))
    assert summary["test_nll_se"] == pytest.approx(float(last.per_datum.std()) / 8 ** 0.5)
    assert summary["test_nll_bits_per_dim"] == pytest.approx(
        summary["test_nll"] / (6 * math.log(2)))
    assert summary["test_nll_mc_se"] == pytest.approx(
        float(last.per_datum_mc_se.square().sum().sqrt()) / 8)
    assert math.isnan(log_likelihood(vae, x, 1).per_datum_mc_se[0])
    assert 1 <= last.per_datum_ess.min() and last.per_datum_ess.max() <= 100
    vae.set_posterior_guide_()  # equal weights: every draw counts, ESS = k
    torch.testing.assert_close(log_likelihood(vae, x, 50).per_datum_ess,
                               torch.full((8,), 50.0, dtype=torch.float64))


@pytest.mark.parametrize("kwargs,match", [
    ({"samples": 0}, "samples must be"), ({"samples": [10, 5]}, "increasing list"),
    ({"proposal": "posterior"}, "proposal must be one of guide, prior; got 'posterior'"),
    ({"chunk": 0}, "chunk must be an integer >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5")])
def test_bad_arguments_are_refused_with_a_message(linear_gaussian, kwargs, match):
    vae, x = linear_gaussian
    with pytest.raises(ValueError, match=match):
        log_likelihood(vae, x, **kwargs)


def test_progress_reports_every_datum_and_the_running_nll(linear_gaussian, capsys):
    from pyrovae.training.callbacks import NllProgress

    vae, x = linear_gaussian
    calls = []
    pyro.set_rng_seed(0)
    estimate = log_likelihood(vae, x, 50, chunk=20, batch_size=7,
                              progress=lambda n, s: calls.append((n, s)))
    assert sum(n for n, _ in calls) == len(x) and len(calls) == math.ceil(len(x) / 7)
    assert math.isclose(sum(s for _, s in calls), -float(estimate.per_datum.sum()),
                        rel_tol=1e-9)
    with NllProgress(len(x), 50, show=True) as bar:
        for n, s in calls:
            bar(n, s)
    err = capsys.readouterr().err
    assert "test NLL (IWAE-50)" in err and f"{len(x)}/{len(x)}" in err
    assert f"nll={-float(estimate.per_datum.mean()):.2f}" in err
