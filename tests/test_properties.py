"""Property-based tests: random shapes and values never give a silent NaN.

For every registered likelihood and prior (so new ones are covered the moment they are
registered): draws are finite, ``log_prob`` of the distribution's own draws is finite even for
extreme decoder outputs, and data outside the support is refused with a ``ValueError``.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrovae.components.likelihoods import LIKELIHOODS, build_likelihood
from pyrovae.components.priors import prior_names
from pyrovae.models.vae import VAE

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
data_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
@SETTINGS
@given(batch=shapes, data_shape=data_shapes, magnitude=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_likelihood_log_prob_is_finite_or_refused(name, batch, data_shape, magnitude, seed):
    likelihood = build_likelihood(name)
    generator = torch.Generator().manual_seed(seed)
    width = math.prod(data_shape) * likelihood.params_per_value
    raw = magnitude * torch.randn(*batch, width, generator=generator)
    distribution = likelihood(raw, data_shape)
    assert distribution.batch_shape == batch and distribution.event_shape == data_shape
    x = distribution.sample()
    assert torch.isfinite(x).all()
    likelihood.check(x.reshape(-1, *data_shape))  # its own draws are in its support
    log_prob = distribution.log_prob(x)
    assert log_prob.shape == batch and torch.isfinite(log_prob).all(), (name, magnitude)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
@SETTINGS
@given(value=st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.5, 1.5, 7.0]))
def test_likelihood_check_refuses_out_of_support_values(name, value):
    likelihood = build_likelihood(name)
    x = torch.full((2, 1, 3, 3), 0.0)
    x[1, 0, 1, 1] = value
    if bool(likelihood.in_support(x).all()):
        return  # inside this likelihood's support (e.g. 7.0 for a Gaussian)
    with pytest.raises(ValueError, match=f"likelihood '{name}' needs data in"):
        likelihood.check(x)


@pytest.mark.parametrize("name", prior_names())
@SETTINGS
@given(batch=shapes, z_dim=st.integers(1, 8), scale=st.sampled_from([1.0, 10.0, 1e3]))
def test_prior_draws_and_log_prob_are_finite(name, batch, z_dim, scale):
    prior = VAE((1, 2, 2), z_dim, hidden=(4,), prior=name).prior  # attached, as VAEs use it
    distribution = prior(batch)
    assert distribution.batch_shape == batch and distribution.event_shape == (z_dim,)
    z = distribution.sample()
    assert torch.isfinite(z).all()
    for value in (z, z * scale):
        log_prob = distribution.log_prob(value)
        assert log_prob.shape == batch and torch.isfinite(log_prob).all(), (name, scale)
