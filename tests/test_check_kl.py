"""``pyrovae check-kl``: agrees on correct models, catches a wrong closed form, exit codes.

The command's own tolerance (see ``pyrovae.inference.check_kl.RULE``) is used as is, with alpha =
1e-3 per check and fixed seeds: a correct model would fail with probability <= 2e-3 per run
when the per-draw differences are normal. The wrong closed forms below are caught by a wide
margin (measured: value |z| = 53 against a limit of 3.5; gradient max |z| = 32 against 6.4),
so catching them does not hinge on the seed.
"""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch.distributions.kl as torch_kl

from pyrovae.components.data import binarize, load_dataset
from pyrovae.inference.check_kl import check_kl
from pyrovae.inference.statistics import student_t_quantile
from pyrovae.models.vae import VAE
from pyrovae.runs.cli import main
from pyrovae.training.trainer import Trainer

QUICK = ["--draws", "60", "--batch-size", "16"]


def test_a_fresh_model_agrees_and_the_table_is_written_as_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check-kl", *QUICK, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "freshly initialised model" in table and "verdict: AGREE" in table
    for row in ("analytic", "trace (Monte Carlo)", "trace - analytic", "encoder", "decoder"):
        assert row in table
    report = json.loads(out.read_text())
    assert report["agree"] and report["draws"] == 60 and report["batch_size"] == 16
    assert set(report["gradients"]) == {"encoder", "decoder"}
    assert report["gradients"]["decoder"]["rel_error"] == 0  # the KL does not touch it

    assert main(["check-kl", *QUICK, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == report["value"]


# the closed form of D[N(mu, diag s^2) || N(m, diag t^2)] the estimators use: Pyro's entry
# for its Independent distributions in torch's KL registry (the one closed-form path)
PAIR = (torch_kl.Independent, torch_kl.Independent)
REFERENCE = torch_kl._KL_REGISTRY[PAIR]


def _constant_offset(q, p):
    """Right gradient, wrong value: every datum's KL 1 nat too large."""
    return REFERENCE(q, p) + 1.0


def _detached_scale(q, p):
    """Right value, wrong gradient: the KL no longer pushes the encoder's scale."""
    base = q.base_dist
    return REFERENCE(dist.Normal(base.loc, base.scale.detach()).to_event(1), p)


@pytest.fixture
def wrong_kl(monkeypatch):
    """Replace the registered closed form for the duration of a test."""
    def install(function):
        monkeypatch.setitem(torch_kl._KL_REGISTRY, PAIR, function)
        torch_kl._KL_MEMOIZE.clear()  # torch caches the dispatch
    yield install
    monkeypatch.undo()
    torch_kl._KL_MEMOIZE.clear()


@pytest.mark.parametrize("wrong,fails", [(_constant_offset, "value FAILS"),
                                         (_detached_scale, "gradients FAIL")])
def test_a_wrong_closed_form_is_caught(wrong_kl, capsys, wrong, fails):
    wrong_kl(wrong)
    assert main(["check-kl", *QUICK]) == 1
    table = capsys.readouterr().out
    assert "verdict: DISAGREE" in table and fails in table


def test_a_run_folder_is_checked_on_its_test_images(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--hidden", "16",
                 "--batch-size", "100", "--particles", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["check-kl", str(run), "--draws", "40", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"].startswith(f"run {run}") and report["agree"]
    assert report["batch_size"] == 100 and report["particles"] == 2


@pytest.mark.parametrize("flags,message", [
    (["--draws", "5"], "draws must be an integer >= 20, got 5"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--alpha", "1.5"], "alpha must be a number in (0, 1), got 1.5"),
    (["/nonexistent/run"], "/nonexistent/run is not a pyrovae run folder (no config.json)"),
    (["--device", "tpu"], "device must be 'auto', 'cpu' or 'cuda[:N]'; got 'tpu'"),
])
def test_bad_input_is_one_line_and_exit_status_2(capsys, flags, message):
    assert main(["check-kl", *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"pyrovae check-kl: error: {message}\n"


@pytest.mark.parametrize("upper,dof,exact", [(5e-4, 199, 3.340), (1e-6, 19, 6.723),
                                             (1.4e-8, 39, 6.915), (1e-9, 999, 6.054)])
def test_the_t_quantile_matches_scipys(upper, dof, exact):
    """Reference values: scipy.stats.t.isf(upper, dof), to 3 decimals."""
    assert student_t_quantile(upper, dof) == pytest.approx(exact, abs=2e-3)


def test_the_analytic_path_has_lower_gradient_variance_on_a_trained_model():
    """On a trained Bernoulli VAE, the encoder's per-draw gradient spread is smaller on the
    analytic path (measured ratio trace/analytic: 3.1; the ratio of two variance estimates
    of 100 draws has a log-sd under 0.2, so > 1 holds with a wide margin).

    The value is another matter: as Q(z|X) approaches the posterior, log P(X, z) - log Q(z)
    varies less than log P(X|z) alone (it is constant at the exact posterior, see
    test_linear_gaussian), so ``trace``'s per-draw value spread is the smaller one there.
    """
    data = load_dataset("digits")
    pyro.set_rng_seed(0)
    vae = VAE(data.image_shape, z_dim=10, hidden=(64,), likelihood="bernoulli")
    Trainer(vae, "trace", lr=3e-3).fit(binarize(data.train_x, "static", seed=0), epochs=3,
                                       batch_size=64, progress=False)
    report = check_kl(vae, binarize(data.test_x[:64], "static", seed=1), draws=100)
    assert report["agree"]
    assert report["gradients"]["encoder"]["sd_ratio"] > 1
