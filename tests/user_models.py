"""Model/guide pairs written the way Pyro users write them, not with pyrovae's classes.

- :class:`TutorialVAE`: Pyro's ``examples/vae/vae.py`` model as written there (plain
  ``nn.Module`` encoder and decoder, ``pyro.module``, sites ``latent`` and ``obs``), for a
  given number of pixels;
- :func:`pca_model` / :func:`pca_guide`: a linear-Gaussian pair of functions whose
  parameters are ``pyro.param`` statements created on the first call (sites ``code`` and
  ``pixels``, plate ``items``), with exact log p(x) and ELBO (:func:`pca_exact`);
- :class:`TwoSiteVAE`: two latent sites, a relaxed one-hot class and a Gaussian style.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints


class Encoder(nn.Module):
    def __init__(self, pixels, z_dim, hidden_dim):
        super().__init__()
        self.pixels = pixels
        self.fc1 = nn.Linear(pixels, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, self.pixels)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, pixels, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, pixels)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class TutorialVAE(nn.Module):
    """Pyro's tutorial VAE (``examples/vae/vae.py``), its pixel count a parameter."""

    def __init__(self, pixels=784, z_dim=50, hidden_dim=400):
        super().__init__()
        self.pixels, self.z_dim = pixels, z_dim
        self.encoder = Encoder(pixels, z_dim, hidden_dim)
        self.decoder = Decoder(pixels, z_dim, hidden_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                        obs=x.reshape(-1, self.pixels))
            return loc_img

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


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


class TwoSiteVAE(nn.Module):
    """A class site (relaxed one-hot, ``classes`` values) and a Gaussian style site."""

    def __init__(self, pixels=16, classes=3, style_dim=2, hidden=16):
        super().__init__()
        self.classes, self.style_dim = classes, style_dim
        self.encoder = nn.ModuleDict({
            "body": nn.Sequential(nn.Linear(pixels, hidden), nn.Tanh()),
            "class_logits": nn.Linear(hidden, classes),
            "style_loc": nn.Linear(hidden + classes, style_dim),
            "style_scale": nn.Linear(hidden + classes, style_dim)})
        self.decoder = nn.Sequential(nn.Linear(classes + style_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, pixels))
        self.register_buffer("temperature", torch.tensor(0.5))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            y = pyro.sample("class", dist.RelaxedOneHotCategorical(
                self.temperature, logits=flat.new_zeros(self.classes)))
            style = pyro.sample("style", dist.Normal(flat.new_zeros(self.style_dim), 1.0)
                                .to_event(1))
            logits = self.decoder(torch.cat([y, style], -1))
            pyro.sample("obs", dist.Bernoulli(logits=logits, validate_args=False).to_event(1),
                        obs=flat)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        net = self.encoder
        flat = x.reshape(len(x), -1)
        with pyro.plate("data", len(x)):
            h = net["body"](flat)
            y = pyro.sample("class", dist.RelaxedOneHotCategorical(
                self.temperature, logits=net["class_logits"](h)))
            hy = torch.cat([h.expand(*y.shape[:-1], h.shape[-1]), y], -1)
            scale = nn.functional.softplus(net["style_scale"](hy)) + 1e-3
            pyro.sample("style", dist.Normal(net["style_loc"](hy), scale).to_event(1))


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
