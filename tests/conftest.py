"""Shared fixtures: every test starts with an empty param store, fixed seeds, validation on."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def tiny_images():
    """40 grey 4x4 images in [0, 1], shape (40, 1, 4, 4), and their binary versions."""
    generator = torch.Generator().manual_seed(1)
    grey = torch.rand(40, 1, 4, 4, generator=generator)
    return grey, torch.bernoulli(grey, generator=generator)


@pytest.fixture
def shared_data_dir() -> Path:
    """Where the real MNIST lies (``../shared/data``), or ``$PYROVAE_SHARED_DATA``."""
    import os

    return Path(os.environ.get("PYROVAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def linear_gaussian():
    """Probabilistic PCA as a float64 VAE with exact log p(x), posterior and ELBO.

    Returns ``(vae, x)``: a :class:`pyrovae.models.linear_gaussian.LinearGaussianVAE` (data shape
    ``(1, 2, 3)``, z_dim 2, sigma 0.5, W with orthogonal columns) whose guide is random, not the
    posterior (``vae.set_posterior_guide_()`` makes it exact), and 8 data drawn from it.
    """
    from pyrovae.models.linear_gaussian import make_linear_gaussian

    return make_linear_gaussian(n=8, seed=0)
