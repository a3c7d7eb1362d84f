"""Model/guide pairs written the way Pyro users write them, not with pyrovae's classes.

- :class:`TutorialVAE`: Pyro's ``examples/vae/vae.py`` model as written there (plain
  ``nn.Module`` encoder and decoder, ``pyro.module``, sites ``latent`` and ``obs``), for a
  given number of pixels (from ``examples/bring_your_own_model.py``);
- :func:`pca_model` / :func:`pca_guide`: a linear-Gaussian pair of functions whose
  parameters are ``pyro.param`` statements created on the first call (sites ``code`` and
  ``pixels``, plate ``items``), with exact log p(x) and ELBO (:func:`pca_exact`);
- :func:`TwoSiteVAE`: two latent sites, a relaxed one-hot class and a Gaussian style (the
  example's ``ClassStyleVAE``, small).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints


def _load_example():
    """examples/bring_your_own_model.py, whose models are written as Pyro users write them."""
    path = Path(__file__).resolve().parents[1] / "examples" / "bring_your_own_model.py"
    name = "bring_your_own_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


TutorialVAE = _load_example().TutorialVAE      # Pyro's examples/vae model
ClassStyleVAE = _load_example().ClassStyleVAE  # a class site and a style site


K = 2  # latent dimension of the linear-Gaussian pair


def pca_model(x):
    """z ~ N(0, I_K), x | z ~ N(W z + b, s^2 I_D); x of shape (N, D)."""
    d = x.shape[-1]
    w = pyro.param("W", lambda: 0.5 * torch.randn(d, K, dtype=x.dtype))
    b = pyro.param("b", lambda: torch.zeros(d, dtype=x.dtype))
    s = pyro.param("noise", lambda: torch.tensor(0.7, dtype=x.dtype),
                   constraint=constraints.positive)
    with pyro.plate("items", x.shape[0]):
        z = pyro.sample("code", dist.Normal(x.new_zeros(K), 1.0).to_event(1))
        pyro.sample("pixels", dist.Normal(z @ w.T + b, s).to_event(1), obs=x)


def pca_guide(x):
    """Q(z|x) = N(A x + c, diag q^2), parameters made on the first call."""
    d = x.shape[-1]
    a = pyro.param("A", lambda: 0.1 * torch.randn(K, d, dtype=x.dtype))
    c = pyro.param("c", lambda: torch.zeros(K, dtype=x.dtype))
    q = pyro.param("q_scale", lambda: torch.full((K,), 0.5, dtype=x.dtype),
                   constraint=constraints.positive)
    with pyro.plate("items", x.shape[0]):
        pyro.sample("code", dist.Normal(x @ a.T + c, q).to_event(1))


def pca_exact(x):
    """Exact per-datum log p(x) and ELBO of the pair at the store's current parameters."""
    store = pyro.get_param_store()
    w, b, s = store["W"], store["b"], store["noise"]
    a, c, q = store["A"], store["c"], store["q_scale"]
    d = x.shape[-1]
    cov = w @ w.T + s ** 2 * torch.eye(d, dtype=x.dtype)
    log_px = dist.MultivariateNormal(b, cov).log_prob(x)
    m = x @ a.T + c
    residual = (x - m @ w.T - b).square().sum(-1) + (w.square() * q.square()).sum()
    expected_loglik = -0.5 * d * math.log(2 * math.pi) - d * s.log() - residual / (2 * s ** 2)
    kl = 0.5 * (q.square() + m.square() - 1 - 2 * q.log()).sum(-1)
    return log_px, expected_loglik - kl


def set_exact_posterior(x_dim: int, dtype=torch.float64):
    """Give the pair W with orthogonal columns and make the guide its exact posterior:
    Q(z|x) = N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I (diagonal here)."""
    store = pyro.get_param_store()
    with torch.no_grad():
        w = torch.zeros(x_dim, K, dtype=dtype)
        w[0, 0], w[1, 1] = 1.5, 0.8
        store["W"].copy_(w)
        s = store["noise"]
        m = torch.diag(w.T @ w) + s ** 2
        store["A"].copy_(w.T / m[:, None])
        store["c"].copy_(-(w.T @ store["b"]) / m)
        store._params["q_scale"].copy_((s / m.sqrt()).log())  # positive: stored as a log


def TwoSiteVAE():
    """A small :class:`ClassStyleVAE` for 4x4 images: 3 classes, a 2-d style."""
    return ClassStyleVAE(16, classes=3, style_dim=2, hidden=16)


def flat_pca():
    """The linear-Gaussian functions on images, flattened: a ``(model, guide)`` factory for
    ``--model tests/user_models.py:flat_pca``."""

    def model(x):
        pca_model(x.reshape(len(x), -1))

    def guide(x):
        pca_guide(x.reshape(len(x), -1))

    return model, guide


class _NoMean(dist.Normal):
    @property
    def mean(self):
        raise NotImplementedError


class NoMeanVAE(TutorialVAE):
    """The tutorial VAE with a data distribution that has no mean: it cannot generate."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("obs", _NoMean(self.decoder(z), 0.3).to_event(1),
                        obs=x.reshape(-1, self.pixels))


class NoisyTutorialVAE(TutorialVAE):
    """The tutorial VAE with a Gaussian likelihood whose scale is a ``pyro.param``: an
    ``nn.Module`` pair with one parameter that no module holds."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        scale = pyro.param("obs_scale", lambda: torch.tensor(0.5), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(self.decoder(z), scale).to_event(1),
                        obs=x.reshape(-1, self.pixels))


class RootPyroVAE(pyro.nn.PyroModule):
    """A PyroModule whose parameters sit on the root (no children): a linear Gaussian."""

    def __init__(self, d=16, k=2):
        super().__init__()
        self.d, self.k = d, k
        self.w = torch.nn.Parameter(0.1 * torch.randn(d, k))
        self.a = torch.nn.Parameter(0.1 * torch.randn(k, d))

    @pyro.nn.pyro_method
    def model(self, x):
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(flat.new_zeros(self.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T, 0.5).to_event(1), obs=flat)

    @pyro.nn.pyro_method
    def guide(self, x):
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(flat @ self.a.T, 0.5).to_event(1))


def raising_factory():
    raise RuntimeError("my model is broken")
