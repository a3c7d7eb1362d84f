"""Convolutional encoder and decoder: batch independence, particle dims kept, sizes checked, and
every prior, estimator and kind trains with them, on grey and colour images."""

import json
import math

import pytest
import torch
from reference import assert_sync_free_and_capturable

from pyrovae.components.conv import ConvDecoder, ConvEncoder
from pyrovae.components.priors import prior_names
from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.models.hvae import HierarchicalVAE
from pyrovae.models.vae import VAE
from pyrovae.runs.cli import main
from pyrovae.training.trainer import Trainer

SHAPE = (3, 8, 8)


def images(n=20, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


def conv_pair(z_dim=3, params=1, shape=SHAPE):
    return (ConvEncoder(shape, (4, 6), (16,), z_dim),
            ConvDecoder(z_dim, shape, (4, 6), (16,), params))


def test_output_i_does_not_depend_on_input_j():
    encoder, decoder = conv_pair()
    x = images(4)
    jacobian = torch.autograd.functional.jacobian(lambda v: encoder(v)[0], x)  # (4, 3, 4, ...)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert jacobian[i, :, j].abs().max() == 0
    z = torch.randn(4, 3)
    jacobian = torch.autograd.functional.jacobian(decoder, z)  # (4, 192, 4, 3)
    for i in range(4):
        assert jacobian[i, :, [j for j in range(4) if j != i]].abs().max() == 0


def test_particle_dims_on_the_left_are_kept():
    encoder, decoder = conv_pair(params=2)
    x = images(5).expand(2, 5, *SHAPE)  # K = 2 particles of a batch of 5
    loc, scale = encoder(x)
    assert loc.shape == scale.shape == (2, 5, 3) and (scale > 0).all()
    torch.testing.assert_close(loc[1], encoder(x[1])[0])
    z = torch.randn(2, 5, 3)
    out = decoder(z)
    assert out.shape == (2, 5, 2 * math.prod(SHAPE))
    torch.testing.assert_close(out[0], decoder(z[0]))


def test_sizes_the_blocks_cannot_halve_are_refused():
    with pytest.raises(ValueError, match="2 down-sampling block.*divisible by 4; the images "
                       "are 6x6"):
        ConvEncoder((1, 6, 6), (4, 6), (16,), 2)
    with pytest.raises(ValueError, match=r"need images \(C, H, W\)"):
        ConvEncoder((36,), (4,), (16,), 2)


def conv_vae(**options):
    encoder, decoder = conv_pair(params=options.pop("params", 1))
    return VAE(SHAPE, z_dim=3, hidden=(16,), encoder=encoder, decoder=decoder, **options)


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_trains_a_conv_vae_on_colour_images(name):
    x = images()
    vae = conv_vae(sigma=0.2)
    before = [p.detach().clone() for p in vae.parameters()]
    history = Trainer(vae, build_estimator(name, 3), lr=1e-2).fit(
        x, epochs=2, batch_size=10, test_x=x[:10], progress=False)
    assert all(math.isfinite(h["train_elbo"]) for h in history)
    assert all(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))


@pytest.mark.parametrize("prior", prior_names())
def test_every_prior_trains_with_conv_networks_sync_free_and_capturable(prior):
    x = images()
    vae = conv_vae(prior=prior, likelihood="discretized_logistic", logistic_components=2,
                   params=6)
    assert_sync_free_and_capturable(vae, build_estimator("iwae", 2), x)
    assert vae.sample(4).shape == (4, *SHAPE)


def test_a_conv_hvae_trains_and_reconstructs():
    x = images()
    encoder, decoder = conv_pair(z_dim=5)
    hvae = HierarchicalVAE(SHAPE, latent=(5, 2), hidden=(16,), encoder=encoder,
                           decoder=decoder, sigma=0.2)
    history = Trainer(hvae, "iwae", particles=2, lr=1e-2, compile="trace").fit(
        x, epochs=2, batch_size=10, progress=False)
    assert all(math.isfinite(h["train_elbo"]) for h in history)
    assert hvae.reconstruct(x[:3]).shape == (3, *SHAPE)


def test_cli_trains_a_conv_vae_on_the_colour_patches(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "photo-patches", "--network", "conv", "--channels",
                 "8", "16", "--hidden", "32", "--z-dim", "4", "--likelihood",
                 "discretized_logistic", "--logistic-components", "2", "--epochs", "2",
                 "--batch-size", "256", "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--limit", "50", "--nll-samples", "5"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert report["likelihood_kind"] == "discrete: a probability of 8-bit values"
    assert 0 < report["test_nll_bits_per_dim"] < 16  # finite and sane; 8 is a uniform model
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1]["train_elbo"] > epochs[0]["train_elbo"]
    for name in ("samples", "reconstructions"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
    code = main(["train", "--network", "conv", "--model", "cvae", "--condition", "half",
                 "--out", str(tmp_path / "c"), "--quiet"])
    assert code == 2 and "--network conv is for the vae and hvae" in capsys.readouterr().err
