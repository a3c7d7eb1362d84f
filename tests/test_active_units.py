"""Active units (Burda et al. 2015): A_u = Cov_X(E_Q[u|X]) > 0.01, on models where the answer
is known exactly.

- Probabilistic PCA with 4 latent units and data from 2 factors: the decoder ignores units 2
  and 3 (zero columns of W), the exact posterior's mean there is 0 for every X, so exactly 2
  units are active, with A_u the variance of the exact posterior means.
- The two-layer linear-Gaussian model at its exact posterior: E_Q[z2|X] = C m1(X) + c in closed
  form; the estimate from guide draws matches it within a tolerance derived from its
  Monte-Carlo error (|z| < 4.5).
"""

import pyro
import pytest
import torch

from pyrovae.inference.active_units import THRESHOLD, active_units
from pyrovae.models.hvae import HierarchicalVAE
from pyrovae.models.linear_gaussian import LinearGaussianVAE
from pyrovae.models.two_layer_gaussian import TwoLayerLinearGaussian
from pyrovae.models.vae import VAE


def two_factor_pca(n=400):
    vae = LinearGaussianVAE.random(data_shape=(6,), z_dim=4, sigma=0.3, seed=2)
    with torch.no_grad():
        vae.decoder.weight[:, 2:] = 0.0  # units 2, 3: nothing in X depends on them
    vae.set_posterior_guide_()
    return vae, vae.sample_data(n, seed=5)


def test_units_the_decoder_ignores_are_inactive_and_the_others_exact():
    vae, x = two_factor_pca()
    activity, draws = active_units(vae, x)
    assert draws == 1  # one Gaussian site: its mean is exact at one draw
    (site,) = activity.values()
    assert site.site == "z" and (site.active, site.units) == (2, 4)
    exact = vae.exact_posterior(x).loc.var(0)
    torch.testing.assert_close(site.activity, exact.float(), rtol=1e-5, atol=1e-12)
    assert (site.activity[2:] == 0).all() and (site.activity[:2] > 10 * THRESHOLD).all()
    summary = site.summary()
    assert summary["active"] == 2 and len(summary["activity"]) == 4


def test_the_batch_size_does_not_change_the_answer():
    vae, x = two_factor_pca(n=50)
    one, _ = active_units(vae, x, batch_size=7)
    whole, _ = active_units(vae, x, batch_size=50)
    torch.testing.assert_close(one["z"].activity, whole["z"].activity)


def test_a_lower_layer_below_another_matches_its_closed_form_within_monte_carlo_error():
    pair = TwoLayerLinearGaussian(d=5, k1=3, k2=2, seed=4).set_exact_guide_()
    x = pair.sample_data(300, seed=6)
    draws = 200
    pyro.set_rng_seed(0)
    activity, used = active_units(pair, x, draws=draws)
    assert used == draws and list(activity) == ["z1", "z2"]
    with torch.no_grad():
        m1 = pair.exact_z1_posterior(x)
        exact_means = m1.loc @ pair.C.T + pair.c                       # E_Q[z2 | x], (N, 2)
        noise = (pair.C @ m1.covariance_matrix[0] @ pair.C.T).diagonal() / draws  # per datum
    torch.testing.assert_close(activity["z1"].activity, m1.loc.var(0).float(), rtol=1e-5,
                               atol=1e-9)
    # the estimate is the variance of (exact mean + e_i), Var(e_i) = noise: its mean is
    # var(exact) + noise, its s.e. from the cross term and the spread of e_i^2
    n = len(x)
    expected = exact_means.var(0) + noise
    se = (4 * exact_means.var(0) * noise / n + 2 * noise ** 2 / n).sqrt()
    z = (activity["z2"].activity.double() - expected) / se
    assert z.abs().max() < 4.5, z


def test_the_hvae_and_a_flow_guide_take_many_draws_and_a_vae_one():
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    hvae = HierarchicalVAE((1, 4, 4), latent=(5, 2), hidden=(8,))
    activity, draws = active_units(hvae, x)
    assert draws == 100 and [a.units for a in activity.values()] == [5, 2]
    assert active_units(VAE((1, 4, 4), 3, (8,), guide="flow"), x)[1] == 100
    assert active_units(VAE((1, 4, 4), 3, (8,)), x)[1] == 1


def test_a_single_datum_is_refused():
    vae, x = two_factor_pca(n=2)
    with pytest.raises(ValueError, match="at least 2 data"):
        active_units(vae, x[:1])
