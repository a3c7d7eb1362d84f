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
