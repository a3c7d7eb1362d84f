"""The VAE's model and guide: sites, shapes, plates, batch independence."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match

from pyrovae.components.likelihoods import LIKELIHOODS
from pyrovae.models.vae import VAE


def traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    return model_trace, guide_trace


@pytest.mark.parametrize("likelihood", LIKELIHOODS.names())
def test_sites_shapes_and_model_guide_match(tiny_images, likelihood):
    grey, binary = tiny_images
    x = binary[:5] if likelihood == "bernoulli" else grey[:5]
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8, 6), likelihood=likelihood)
    model_trace, guide_trace = traces(vae, x)
    check_model_guide_match(model_trace, guide_trace, max_plate_nesting=1)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["value"].shape == (5, 3) and z["fn"].event_shape == (3,)
    assert obs["is_observed"] and obs["fn"].event_shape == (1, 4, 4)
    assert obs["fn"].batch_shape == (5,) and obs["log_prob"].shape == (5,)
    assert guide_trace.nodes["z"]["log_prob"].shape == (5,)
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert guide_trace.nodes["z"]["fn"].has_rsample


def test_reconstruct_and_sample_shapes(tiny_images):
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    assert vae.reconstruct(grey[:7]).shape == (7, 1, 4, 4)
    assert vae.sample(5).shape == (5, 1, 4, 4)
    bernoulli = VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood="bernoulli")
    samples = bernoulli.sample(5)
    assert ((samples >= 0) & (samples <= 1)).all()


def test_wrong_data_shape_is_a_clear_error(tiny_images):
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 4, 4\).*\(5, 16\)"):
        vae.model(grey[:5].reshape(5, 16))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        vae.sample(0)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_z_dim_and_sizes(bad):
    with pytest.raises(ValueError, match="must be"):
        VAE((1, 4, 4), z_dim=bad)
    with pytest.raises(ValueError, match="hidden sizes must be positive integers"):
        VAE((1, 4, 4), z_dim=2, hidden=(8, bad))


def test_batch_independence(tiny_images):
    """Output i of the encoder and decoder has zero gradient w.r.t. input j != i."""
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,))
    x = grey[:4].clone().requires_grad_(True)
    z = torch.randn(4, 3, requires_grad=True)
    for name, inputs, output in [
        ("encoder loc", x, lambda: vae.encoder(x)[0]),
        ("encoder scale", x, lambda: vae.encoder(x)[1]),
        ("decoder", z, lambda: vae.decoder(z)),
    ]:
        out = output()
        for i in range(4):
            (grad,) = torch.autograd.grad(out[i].sum(), inputs, retain_graph=True)
            others = torch.cat([grad[:i], grad[i + 1:]])
            assert torch.count_nonzero(others) == 0, name
            assert torch.count_nonzero(grad[i]) > 0, name


def test_parameters_are_shared_with_the_param_store(tiny_images):
    """PyroModule all the way down: SVI sees every parameter of the VAE as a param site."""
    grey, _ = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    model_trace, guide_trace = traces(vae, grey[:3])
    seen = {id(site["value"]) for trace in (model_trace, guide_trace)
            for site in trace.nodes.values() if site["type"] == "param"}
    assert seen == {id(p) for p in vae.parameters()}
    assert set(pyro.get_param_store().keys()) == {n for n, _ in vae.named_parameters()}
