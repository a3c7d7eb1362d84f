"""The discretised logistic mixture over 8-bit values, against exact answers.

Its 256 probabilities sum to 1 for random parameters; each log-probability equals the one
computed directly from the logistic CDF with scipy; the edge values take the tails; draws
land on the 1/255 grid with the model's frequencies (a chi-square test at a fixed seed);
data off the grid are refused, naming what is allowed.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyrovae.components.likelihoods import build_likelihood
from pyrovae.components.logistic import LEVELS, DiscretizedLogisticMixture, on_the_grid
from pyrovae.models.vae import VAE
from pyrovae.training.trainer import Trainer

VALUES = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)


def random_mixture(batch=(3, 4), k=3, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(*batch, k, generator=g, dtype=torch.float64)  # noqa: E731
    return DiscretizedLogisticMixture(draw(), 0.8 * draw(), spread * draw() - 2.0)


def direct_probabilities(mixture) -> np.ndarray:
    """P(x) for every value and batch element from scipy's logistic CDF: ``(256, *batch)``."""
    weights = torch.softmax(mixture.logits, -1).numpy()
    loc, scale = mixture.loc.numpy(), mixture.log_scale.exp().numpy()
    centred = 2 * VALUES.numpy() - 1
    upper = np.where(centred[:, None] > 1 - 1e-9, np.inf, centred[:, None] + 1 / 255)
    lower = np.where(centred[:, None] < -1 + 1e-9, -np.inf, centred[:, None] - 1 / 255)
    flat = [(w, m, s) for w, m, s in zip(weights.reshape(-1, weights.shape[-1]),
                                         loc.reshape(-1, loc.shape[-1]),
                                         scale.reshape(-1, scale.shape[-1]))]
    out = np.zeros((LEVELS, len(flat)))
    for j, (w, m, s) in enumerate(flat):
        # right of a component's mean, the difference of survival functions keeps the digits
        left = stats.logistic.cdf(upper, m, s) - stats.logistic.cdf(lower, m, s)
        right = stats.logistic.sf(lower, m, s) - stats.logistic.sf(upper, m, s)
        out[:, j] = (np.where(centred[:, None] > m, right, left) * w).sum(-1)
    return out.reshape((LEVELS,) + mixture.batch_shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_256_probabilities_sum_to_one(seed):
    mixture = random_mixture(seed=seed)
    log_p = mixture.log_prob(VALUES.reshape(-1, 1, 1))
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(3, 4, dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_log_probabilities_equal_the_logistic_cdf_computed_directly():
    mixture = random_mixture(seed=4)
    expected = direct_probabilities(mixture)
    log_p = mixture.log_prob(VALUES.reshape(-1, 1, 1)).numpy()
    big = expected > 1e-5
    np.testing.assert_allclose(log_p[big], np.log(expected[big]), rtol=1e-9)
    # far in a tail: computed in log space, never rounded to log 0
    small = (expected < 1e-6) & (expected > 1e-250)
    assert small.any()
    np.testing.assert_allclose(log_p[small], np.log(expected[small]), rtol=1e-4)
    assert np.isfinite(log_p).all()


def test_the_edge_values_take_the_tails():
    # one component centred far below 0: nearly all its mass is in the value 0, and the
    # value 0 holds the whole tail below -1 + 1/255
    low = DiscretizedLogisticMixture(torch.zeros(1, 1), torch.tensor([[-3.0]]),
                                     torch.tensor([[math.log(0.05)]]))
    assert float(low.log_prob(torch.zeros(1)).exp()) > 1 - 1e-12
    high = DiscretizedLogisticMixture(torch.zeros(1, 1), torch.tensor([[3.0]]),
                                      torch.tensor([[math.log(0.05)]]))
    assert float(high.log_prob(torch.ones(1)).exp()) > 1 - 1e-12
    centred = DiscretizedLogisticMixture(torch.zeros(1, 1, dtype=torch.float64),
                                         torch.zeros(1, 1, dtype=torch.float64),
                                         torch.zeros(1, 1, dtype=torch.float64))
    expected = stats.logistic.cdf(-1 + 1 / 255, 0, 1)
    assert float(centred.log_prob(torch.zeros(1, dtype=torch.float64)).exp()) == \
        pytest.approx(expected, rel=1e-12)


def test_draws_are_on_the_grid_with_the_models_frequencies():
    torch.manual_seed(0)
    mixture = DiscretizedLogisticMixture(torch.tensor([0.0, 1.0]), torch.tensor([-0.5, 0.6]),
                                         torch.tensor([-2.0, -2.5]))
    draws = mixture.sample((20000,))
    assert on_the_grid(draws).all()
    counts = torch.bincount((draws * 255).round().long(), minlength=LEVELS).double()
    probs = mixture.log_prob(VALUES.float()).exp().double()
    keep = probs * len(draws) > 5  # chi-square needs expected counts >= 5
    observed, expected = counts[keep], probs[keep] * len(draws)
    rest = len(draws) - observed.sum(), len(draws) - expected.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum() + (rest[0] - rest[1]) ** 2 / rest[1]
    dof = int(keep.sum())  # the kept bins plus the rest, minus one
    assert stats.chi2.sf(float(chi2), dof) > 1e-4
    mean = mixture.mean
    assert abs(float(mean) - float(draws.mean())) < 4.5 * float(draws.std()) / len(draws) ** 0.5


def test_the_likelihood_refuses_data_off_the_grid_and_trains_on_8_bit_data():
    likelihood = build_likelihood("discretized_logistic", logistic_components=2)
    assert likelihood.params_per_value == 6 and likelihood.kind.startswith("discrete")
    with pytest.raises(ValueError, match="the 256 values k/255 of 8-bit data"):
        likelihood.check(torch.full((2, 1, 4, 4), 0.5))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 4, 4), generator=g).float() / 255
    likelihood.check(x)
    vae = VAE((1, 4, 4), z_dim=2, hidden=(16,), likelihood="discretized_logistic",
              logistic_components=2)
    history = Trainer(vae, "trace", lr=1e-2).fit(x, epochs=3, batch_size=10, progress=False)
    assert all(math.isfinite(h["train_elbo"]) for h in history)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    assert on_the_grid(vae.output(torch.zeros(5, 2)).sample()).all()
    means = vae.decode(torch.zeros(5, 2))
    assert means.shape == (5, 1, 4, 4) and ((means >= 0) & (means <= 1)).all()


def test_values_and_gradients_stay_finite_in_far_tails_and_at_huge_scales():
    logits = torch.zeros(4, 2, requires_grad=True)
    loc = torch.tensor([[-50.0, 50.0], [0.0, 0.0], [3.0, -3.0], [0.0, 0.0]], requires_grad=True)
    log_scale = torch.tensor([[-7.0, -7.0], [20.0, 20.0], [-7.0, -7.0], [-7.0, 5.0]],
                             requires_grad=True)
    x = torch.tensor([0.5, 0.0, 1.0, 128 / 255])
    log_p = DiscretizedLogisticMixture(logits, loc, log_scale).log_prob(x)
    assert torch.isfinite(log_p).all() and (log_p < 0).all()
    log_p.sum().backward()
    for tensor in (logits, loc, log_scale):
        assert torch.isfinite(tensor.grad).all()
