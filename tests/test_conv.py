"""Convolutional encoder and decoder: batch independence, particle dims kept, sizes checked, and
every prior, estimator and kind (vae, hvae, cvae with its baseline) trains with them, on grey
and colour images."""

import json
import math

import pytest
import torch
from reference import assert_sync_free_and_capturable

from pyrovae.components.conv import ConvDecoder, ConvEncoder
from pyrovae.components.priors import prior_names
from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.models.conditional_conv import ConditionalConvDecoder, ConditionalConvEncoder
from pyrovae.models.conditioning import CONDITIONS, build_condition, pack
from pyrovae.models.cvae import CVAE, PackedCVAE
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


def test_cli_trains_a_conv_vae_on_the_colour_patches(tmp_path):
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


GREY = (1, 8, 8)


def labelled_images(n=20):
    return images(n, GREY).round(), torch.arange(n) % 10


@pytest.mark.parametrize("task", CONDITIONS.names())
def test_the_conditional_conv_networks_see_the_image_and_score_only_y(task):
    pictures, labels = labelled_images(6)
    condition = build_condition(task, GREY)
    x, y = condition.split(pictures, labels)
    h = torch.cat([x, y], -1)
    # [X, Y] put back in place is the image; Y is the image at the modelled positions
    torch.testing.assert_close(h[:, condition.image_index()].reshape(pictures.shape),
                               pictures, rtol=0, atol=0)
    torch.testing.assert_close(pictures.flatten(1)[:, condition.modelled_positions()], y,
                               rtol=0, atol=0)
    encoder = ConditionalConvEncoder(condition, (4, 6), (16,), 3)
    loc, scale = encoder(h)
    torch.testing.assert_close(loc, encoder.net(pictures, context=x)[0], rtol=0, atol=0)
    assert (scale > 0).all()
    # particles on the left kept; datum i's output depends on datum i alone
    loc2, _ = encoder(h.expand(2, *h.shape))
    assert loc2.shape == (2, 6, 3)
    torch.testing.assert_close(loc2[1], loc)
    jacobian = torch.autograd.functional.jacobian(lambda v: encoder(v)[0], h)  # (6, 3, 6, D)
    assert all(jacobian[i, :, j].abs().max() == 0 for i in range(6) for j in range(6)
               if i != j)
    decoder = ConditionalConvDecoder(3 + condition.x_dim, condition, (4, 6), (16,), 2)
    zx = torch.cat([torch.randn(6, 3), x], -1)
    out = decoder(zx)
    whole = decoder.net(zx).reshape(6, 2, -1)  # both parameters of every pixel
    torch.testing.assert_close(out, whole[:, :, condition.modelled_positions()].reshape(6, -1),
                               rtol=0, atol=0)
    assert decoder(zx.expand(3, *zx.shape)).shape == (3, 6, 2 * condition.y_dim)


def conv_cvae(task, prior="standard_normal"):
    condition = build_condition(task, GREY)
    return PackedCVAE(CVAE(
        condition.x_dim, condition.y_dim, z_dim=3, hidden=(16,), prior=prior, components=2,
        encoder=ConditionalConvEncoder(condition, (4, 6), (16,), 3),
        decoder=ConditionalConvDecoder(3 + condition.x_dim, condition, (4, 6), (16,)))), \
        condition


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_trains_a_conv_cvae(name):
    pictures, labels = labelled_images()
    cvae, condition = conv_cvae("quadrant")
    data = pack(*condition.split(pictures, labels))
    before = [p.detach().clone() for p in cvae.parameters()]
    history = Trainer(cvae, build_estimator(name, 3), lr=1e-2).fit(
        data, epochs=2, batch_size=10, test_x=data[:10], progress=False)
    assert all(math.isfinite(h["train_elbo"]) for h in history)
    assert all(not torch.equal(a, b) for a, b in zip(before, cvae.parameters()))


@pytest.mark.parametrize("task,prior", [("label", "conditional_normal"), ("half", "vamp"),
                                        ("quadrant", "standard_normal")])
def test_conv_cvaes_are_sync_free_and_capturable(task, prior):
    pictures, labels = labelled_images()
    cvae, condition = conv_cvae(task, prior)
    assert_sync_free_and_capturable(cvae, build_estimator("iwae", 2),
                                    pack(*condition.split(pictures, labels)))


def test_cli_trains_and_evaluates_a_conv_cvae_with_its_conv_baseline(tmp_path):
    run = tmp_path / "cvae"
    assert main(["train", "--network", "conv", "--channels", "4", "8", "--hidden", "16",
                 "--model", "cvae", "--condition", "half", "--epochs", "2", "--out",
                 str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--limit", "40", "--nll-samples", "5"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert math.isfinite(report["test_nll"]) and math.isfinite(report["baseline_nll"])
    baseline = torch.load(run / "baseline.pt", weights_only=False)
    assert any(".deconvs." in name for name in baseline["model"])  # the conv decoder on X
    assert (run / "figures" / "completions.png").stat().st_size > 1000
