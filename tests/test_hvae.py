"""Two latent layers: the exact two-layer linear-Gaussian reference, and the hvae model kind.

Ground truth is :class:`pyrovae.models.two_layer_gaussian.TwoLayerLinearGaussian` (z2 -> z1
-> x, all linear-Gaussian, float64): log p(x) and the posterior are exact. Monte-Carlo means
over N float64 draws are compared with exact values by z = (mean - exact) / s.e., failing at
|z| > 4.5 (two-sided false-failure rate about 1e-5 per comparison). Seeds are fixed.
"""

import json
import re

import pyro
import pyro.poutine as poutine
import pytest
import torch
from reference import assert_sync_free_and_capturable

from pyrovae.components.priors import PRIORS
from pyrovae.inference.check_kl import shared_draws, site_kl_methods
from pyrovae.inference.estimators import ESTIMATORS, build_estimator
from pyrovae.inference.evaluation import log_likelihood
from pyrovae.inference.kl import site_kl
from pyrovae.models.hvae import HierarchicalVAE
from pyrovae.models.two_layer_gaussian import TwoLayerLinearGaussian
from pyrovae.runs.checkpoints import model_state
from pyrovae.runs.cli import main
from pyrovae.training.trainer import Trainer

Z_LIMIT = 4.5
DRAWS = 400


@pytest.fixture
def two_layer():
    pair = TwoLayerLinearGaussian(seed=0)
    return pair, pair.sample_data(6, seed=1)


def per_datum_log_weights(pair, x):
    guide = poutine.trace(pair.guide).get_trace(x)
    model = poutine.trace(poutine.replay(pair.model, trace=guide)).get_trace(x)
    total = 0.0
    for trace, sign in ((model, 1.0), (guide, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                total = total + sign * site["fn"].log_prob(site["value"])
    return total


def test_the_exact_guide_makes_every_draw_score_log_px(two_layer):
    pair, x = two_layer
    log_px = pair.log_marginal(x)
    gap = (log_px - per_datum_log_weights(pair, x)).detach()
    assert (gap.abs() > 0.1).any()  # the starting guide is not the posterior
    pair.set_exact_guide_()
    for _ in range(3):  # Bayes: log p(x, z1, z2) - log p(z1, z2 | x) = log p(x) for any z
        torch.testing.assert_close(per_datum_log_weights(pair, x), log_px)
    torch.testing.assert_close(pair.exact_z1_posterior(x).loc, x @ pair.F.T + pair.f)


@pytest.mark.parametrize("name", ["trace", "tracegraph", "iwae", "iwae_dreg", "renyi"])
def test_with_the_exact_posterior_every_sampled_bound_is_log_px_on_every_draw(two_layer,
                                                                               name):
    pair, x = two_layer
    pair.set_exact_guide_()
    log_px = pair.log_marginal(x).sum()
    estimator = build_estimator(name, 1 if name in ("trace", "tracegraph") else 4)
    for _ in range(5):
        value = -estimator.differentiable_loss(pair.model, pair.guide, x).detach()
        torch.testing.assert_close(value, log_px.detach())


def test_the_analytic_estimator_is_unbiased_where_closed_form_everywhere_is_not(two_layer):
    """z1's model parent z2 is drawn after z1 in the guide: the analytic ELBO samples z1's KL
    (mean log p(x) at the exact posterior), while the KL of both sites in closed form, as
    Pyro's TraceMeanField_ELBO would take them, is off by many standard errors."""
    pair, x = two_layer
    pair.set_exact_guide_()
    log_px = float(pair.log_marginal(x).sum().detach())
    estimator = build_estimator("analytic")
    analytic, all_closed = [], []
    with torch.no_grad():
        for _ in range(DRAWS):
            [(model_trace, guide_trace)] = estimator.traces(pair.model, pair.guide, x)
            analytic.append(-float(estimator.particle_loss(model_trace, guide_trace)))
            naive = model_trace.nodes["x"]["log_prob_sum"]
            for site in ("z1", "z2"):
                naive = naive - site_kl(guide_trace.nodes[site], model_trace.nodes[site])
            all_closed.append(float(naive))
    for values, unbiased in ((analytic, True), (all_closed, False)):
        values = torch.tensor(values, dtype=torch.float64)
        z = (values.mean() - log_px) / (values.std() / DRAWS ** 0.5)
        assert (abs(z) < Z_LIMIT) == unbiased, (unbiased, float(z))
    assert site_kl_methods(pair, x) == {
        "z1": "Monte Carlo (a model parent is drawn after it in the guide)",
        "z2": "closed form"}


def test_closed_form_kl_per_site_agrees_with_monte_carlo(two_layer):
    pair, x = two_layer  # the random guide: not the posterior
    draws = shared_draws(pair, x, ("analytic", "trace"), DRAWS)
    z2 = draws.site_diffs["z2"]
    assert z2.std() > 0.01  # the closed form and the sampled term differ draw by draw ...
    assert abs(z2.mean()) < Z_LIMIT * z2.std() / DRAWS ** 0.5  # ... and agree in mean
    assert torch.equal(draws.site_diffs["z1"], torch.zeros_like(draws.site_diffs["z1"]))
    gap = draws.values["trace"] - draws.values["analytic"]
    assert abs(gap.mean()) < Z_LIMIT * gap.std() / DRAWS ** 0.5


def test_importance_sampled_log_px_agrees_with_the_exact_value(two_layer):
    pair, x = two_layer
    with torch.no_grad():  # a proposal near the posterior, wider than it (as IS wants)
        pair.set_exact_guide_()
        pair.T1.mul_(1.3), pair.T2.mul_(1.3), pair.f.add_(0.2)
    result = log_likelihood(pair, x, samples=4000, chunk=1000)
    assert result.ess > 500
    exact = pair.log_marginal(x).detach()
    estimate = result.per_datum
    assert (exact - estimate).abs().max() > 1e-6  # a proposal that is not the posterior
    assert abs(estimate.mean() - exact.mean()) < Z_LIMIT * result.mc_se + 1e-6


def tiny_hvae(**options):
    options = {"latent": (6, 3), "hidden": ((12,), (8,)), **options}
    return HierarchicalVAE((1, 4, 4), **options)


def test_the_log_likelihood_of_one_datum_does_not_depend_on_another(tiny_images):
    grey, _ = tiny_images
    hvae = tiny_hvae()
    x = grey[:5].clone()
    with torch.no_grad():
        pyro.set_rng_seed(3)
        before = per_datum_log_weights(hvae, x)
        x[2] = 1.0 - x[2]
        pyro.set_rng_seed(3)  # the same noise: only datum 2's score may move
        after = per_datum_log_weights(hvae, x)
    keep = torch.tensor([0, 1, 3, 4])
    torch.testing.assert_close(after[keep], before[keep])
    assert (after[2] - before[2]).abs() > 1e-3


@pytest.mark.parametrize("prior", [p for p in PRIORS.names() if p != "conditional_normal"])
@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_every_estimator_trains_the_hvae_with_every_prior(tiny_images, name, prior):
    _, binary = tiny_images
    hvae = tiny_hvae(prior=prior, likelihood="bernoulli")
    before = [p.detach().clone() for p in hvae.parameters()]
    history = Trainer(hvae, build_estimator(name, 3), lr=1e-2).fit(
        binary, epochs=2, batch_size=10, test_x=binary[:10], progress=False)
    assert all(torch.isfinite(torch.tensor(m["train_elbo"])) for m in history)
    moved = [not torch.equal(old, new) for old, new in zip(before, hvae.parameters())]
    assert all(moved), [n for (n, _), m in zip(hvae.named_parameters(), moved) if not m]


@pytest.mark.parametrize("name,particles", [("analytic", 1), ("iwae", 3)])
def test_fast_and_svi_steppers_train_the_hvae_to_the_same_tensors(tiny_images, name,
                                                                   particles):
    _, binary = tiny_images
    params = {}
    for stepper in ("fast", "svi"):
        pyro.set_rng_seed(0)
        hvae = tiny_hvae(likelihood="bernoulli")
        pyro.set_rng_seed(1)
        Trainer(hvae, build_estimator(name, particles), lr=1e-2, stepper=stepper,
                compile="none").fit(binary, epochs=2, batch_size=10, progress=False)
        params[stepper] = [p.detach().clone() for p in hvae.parameters()]
    for fast, svi in zip(params["fast"], params["svi"]):
        torch.testing.assert_close(fast, svi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("guide", ["diagonal", "flow"])
def test_the_traced_step_trains_the_hvae_as_the_eager_one(tiny_images, guide):
    grey, _ = tiny_images
    params = {}
    for mode in ("none", "trace"):
        pyro.set_rng_seed(0)
        hvae = tiny_hvae(guide=guide)
        Trainer(hvae, "iwae", particles=2, lr=1e-2, compile=mode).fit(
            grey, epochs=3, batch_size=10, progress=False)
        params[mode] = [p.detach().clone() for p in hvae.parameters()]
    for eager, traced in zip(params["none"], params["trace"]):
        assert torch.equal(eager, traced)


def test_the_hvae_draws_decodes_and_reconstructs_in_shape(tiny_images):
    grey, _ = tiny_images
    hvae = tiny_hvae()
    assert hvae.z_dim == 3 and hvae.sites == ("z1", "z2")
    assert hvae.sample(7).shape == (7, 1, 4, 4)
    assert hvae.encode(grey[:5]).shape == (5, 3)
    assert hvae.decode(torch.zeros(2, 4, 3)).shape == (2, 4, 1, 4, 4)
    assert hvae.reconstruct(grey[:5]).shape == grey[:5].shape
    with pytest.raises(ValueError, match="one per latent layer"):
        tiny_hvae(hidden=((4,), (4,), (4,)))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 4, 4\)"):
        hvae.model(grey[:, :, :2])


def run(args, tmp_path, capsys):
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_cli_trains_resumes_evaluates_and_samples_an_hvae(tmp_path, capsys):
    flags = ["--model", "hvae", "--latent", "16", "2", "--block-hidden", "32,32", "16",
             "--quiet", "--elbo", "analytic"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(["train", *flags, "--epochs", "3", "--out", str(whole)], tmp_path, capsys)
    run(["train", *flags, "--epochs", "2", "--out", str(part)], tmp_path, capsys)
    run(["train", "--resume", "--epochs", "3", "--out", str(part), "--quiet"], tmp_path, capsys)
    states = [model_state(run_dir)[0] for run_dir in (whole, part)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    config = json.loads((whole / "config.json").read_text())
    assert (config["latent"], config["z_dim"], config["block_hidden"]) == \
        ([16, 2], 2, [[32, 32], [16]])
    run(["evaluate", str(whole), "--nll-samples", "20"], tmp_path, capsys)
    report = json.loads((whole / "evaluation.json").read_text())
    assert set(report["active_units"]) == {"z1", "z2"}
    assert report["active_units"]["z1"]["units"] == 16
    assert report["active_units_draws"] == 100 and report["test_nll"] > 0
    for name in ("active_units", "latent", "samples", "reconstructions"):
        assert (whole / "figures" / f"{name}.png").is_file(), name
    assert "wrote 9 samples" in run(["sample", str(whole), "-n", "9"], tmp_path, capsys)
    assert "z1" in run(["check-kl", str(whole), "--draws", "20"], tmp_path, capsys)


@pytest.mark.parametrize("flags,message", [
    (["--model", "hvae"], "model 'hvae' needs latent: --latent"),
    (["--model", "hvae", "--latent", "8", "4", "--z-dim", "3"],
     "z_dim is the hvae's top layer: leave it out, or give 4"),
    (["--model", "hvae", "--latent", "8", "4", "--block-hidden", "16"],
     "block_hidden must give one list of widths .* per latent layer \\(2"),
    (["--model", "hvae", "--latent", "8", "0"], "latent must be one or more layer sizes"),
    (["--latent", "8", "4"], "latent \\[8, 4\\] needs --model hvae"),
    (["--model", "hvae", "--latent", "8", "--block-hidden", "16,x"],
     "expected comma-separated integers"),
])
def test_cli_refuses_bad_hvae_flags_with_a_clear_message(tmp_path, capsys, flags, message):
    try:  # argparse's own errors exit, the config's are returned
        code = main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "r"),
                     "--quiet"])
    except SystemExit as exit:
        code = exit.code
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_the_hvae_fast_step_is_sync_free_and_capturable(tiny_images, name):
    grey, _ = tiny_images
    assert_sync_free_and_capturable(tiny_hvae(prior="vamp"), build_estimator(name, 2), grey)
