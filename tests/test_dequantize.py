"""Uniform dequantisation of 8-bit data, and the bits/dim it reports.

A density on [0, 1)^D that is uniform (Beta(1, 1) per value, with the guide equal to the prior
so that every importance weight is exactly 1) has log p = 0 everywhere: its dequantised NLL is
0, and the bound on the 8-bit NLL is D log 256 nats, exactly 8 bits per dimension.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pyrovae.components.data import DeviceBatches, dequantize
from pyrovae.components.networks import MIN_SCALE
from pyrovae.inference.evaluation import nll_report
from pyrovae.models.vae import VAE
from pyrovae.runs.cli import main
from pyrovae.runs.vae_job import dequantized_bits


def eight_bit(n=30, shape=(1, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


def test_each_value_lands_in_its_own_cell_of_width_1_over_256():
    x = eight_bit()
    y = dequantize(x, seed=3)
    levels = torch.round(x * 255)
    assert ((y >= levels / 256) & (y < (levels + 1) / 256)).all()
    assert torch.equal(y, dequantize(x, seed=3)) and not torch.equal(y, dequantize(x, seed=4))
    assert float(y.min()) >= 0 and float(y.max()) < 1


def test_batches_are_dequantised_afresh_every_epoch():
    x = eight_bit(n=8)
    batches = DeviceBatches(x, 8, dequantize=True)
    torch.manual_seed(0)
    first, second = next(iter(batches)), next(iter(batches))
    for batch in (first, second):
        levels = torch.floor(batch * 256)  # the cell each value fell in
        assert torch.equal(torch.sort(levels.flatten()).values,
                           torch.sort(torch.round(x * 255).flatten()).values)
    assert not torch.equal(torch.sort(first.flatten()).values,
                           torch.sort(second.flatten()).values)


def uniform_model(shape=(1, 4, 4)):
    vae = VAE(shape, z_dim=2, hidden=(8,), likelihood="beta")
    with torch.no_grad():
        last = vae.decoder.net.layers[-1]
        last.weight.zero_()
        # softplus(raw) + 1e-3 = 1: Beta(1, 1), the uniform density on [0, 1]
        last.bias.fill_(float(torch.log(torch.expm1(torch.tensor(1 - 1e-3)))))
        head = vae.encoder.net.layers[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.bias[2:].fill_(float(torch.log(torch.expm1(torch.tensor(1.0 - MIN_SCALE)))))
    return vae


def test_a_uniform_density_reports_exactly_8_bits_per_dimension():
    vae = uniform_model()
    loc, scale = vae.encoder(torch.zeros(1, 1, 4, 4))
    torch.testing.assert_close(scale, torch.ones_like(scale))  # Q(z|X) = P(z) = N(0, I)
    x = dequantize(eight_bit(), seed=1)
    report, _ = nll_report(vae, x, samples=20)
    assert abs(report["test_nll"]) < 1e-4  # log p(x|z) = 0 and w = p(z) / q(z) = 1
    bits = dequantized_bits({**report, "test_nll": 0.0}, 16)
    assert bits["test_nll_8bit"] == pytest.approx(16 * math.log(256))
    assert bits["test_nll_bits_per_dim"] == pytest.approx(8.0)
    assert bits["test_nll_bits_per_dim_continuous"] == report["test_nll_bits_per_dim"]
    assert float(F.softplus(vae.decoder.net.layers[-1].bias[0])) + 1e-3 == pytest.approx(1.0)


@pytest.mark.parametrize("flags,message", [
    (["--dequantize"], "--dequantize needs 8-bit data .* of data set 'digits' are not"),
    (["--dequantize", "--binarize", "dynamic"], "does not suit --binarize dynamic"),
    (["--dequantize", "--likelihood", "bernoulli"], "the discrete likelihood 'bernoulli'"),
    (["--dequantize", "--model", "cvae", "--condition", "half"],
     "--dequantize is for the vae and hvae kinds"),
])
def test_dequantize_is_refused_where_it_does_not_apply(tmp_path, capsys, flags, message):
    import re

    code = main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
