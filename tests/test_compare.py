"""``pyrovae compare`` and ``pyrovae evaluate --nll-samples``: tables, files, bad input."""

import csv
import json
import math
import re

import pytest

from pyrovae.inference.compare import (
    AXIS_COLUMNS,
    EstimatorSpec,
    compare_estimators,
    default_specs,
    format_table,
)
from pyrovae.inference.estimators import ESTIMATORS
from pyrovae.models.vae import VAE
from pyrovae.runs.cli import main
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.train import train_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A digits run trained for one epoch (seconds)."""
    out = tmp_path_factory.mktemp("compare") / "run"
    train_run(TrainConfig(epochs=1, hidden=[32], z_dim=3), out, progress=False)
    return out


def test_specs_parse_and_the_defaults_cover_every_estimator():
    assert EstimatorSpec.parse("iwae:50+sf") == EstimatorSpec("iwae", 50, True)
    assert EstimatorSpec.parse("trace").label == "trace:1"
    assert {s.name for s in default_specs()} == set(ESTIMATORS.names())
    for bad in ("foo", "iwae:0", "iwae:x", "trace+pf", "iwae:5:5"):
        with pytest.raises(ValueError, match=re.escape(f"estimator '{bad}' must be NAME")):
            EstimatorSpec.parse(bad)


def test_rows_hold_the_axes_and_the_measurements(tiny_images):
    """One row per spec; the score-function switch shows as a far lower encoder SNR on
    the same model (measured: ~0.2 against ~4) and leaves the decoder's alone."""
    _, binary = tiny_images
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,), likelihood="bernoulli")
    specs = [EstimatorSpec("trace"), EstimatorSpec("trace", 1, True),
             EstimatorSpec("iwae_dreg", 4)]
    rows = compare_estimators(vae, binary[:16], specs, repeats=30)
    assert [r["estimator"] for r in rows] == ["trace:1", "trace:1+sf", "iwae_dreg:4"]
    assert rows[1]["gradient"] == "score function" and rows[2]["particles"] == 4
    assert all(set(AXIS_COLUMNS) <= set(r) for r in rows)
    assert rows[1]["encoder_snr"] < rows[0]["encoder_snr"] / 3
    assert all(math.isfinite(r[k]) and r[k] > 0 for r in rows
               for k in ("bound_sd", "decoder_snr", "decoder_grad_var", "ms_per_step"))
    table = format_table(rows).splitlines()
    assert table[0].split()[:len(AXIS_COLUMNS) + 1] == ["estimator", *AXIS_COLUMNS]
    assert len(table) == 4


def test_compare_command_writes_the_table_csv_and_figure(run_dir, capsys):
    code = main(["compare", str(run_dir), "--estimators", "analytic", "iwae:3",
                 "trace+sf", "--repeats", "5", "--batch-size", "16"])
    assert code == 0
    out = capsys.readouterr().out
    assert "iwae:3" in out and "score function" in out
    with open(run_dir / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["estimator"] for r in rows] == ["analytic:1", "iwae:3", "trace:1+sf"]
    assert (run_dir / "figures" / "compare.png").stat().st_size > 0


def test_evaluate_adds_the_test_nll_with_its_standard_errors(run_dir, capsys):
    code = main(["evaluate", str(run_dir), "--nll-samples", "50", "--chunk", "20",
                 "--limit", "40"])
    assert code == 0
    result = json.loads((run_dir / "evaluation.json").read_text())
    assert result["n_test"] == 40 and result["test_nll_samples"] == 50
    # the IWAE-50 bound is above the ELBO on average: the NLL is below -ELBO
    assert 0 < result["test_nll"] < -result["test_elbo"] + 3 * result["test_nll_se"]
    assert result["test_nll_bits_per_dim"] == pytest.approx(
        result["test_nll"] / (64 * math.log(2)))
    assert result["test_nll_se"] > result["test_nll_mc_se"] > 0
    assert result["test_nll_seconds"] > 0


@pytest.mark.parametrize("argv,message", [
    (["compare", "{run}", "--estimators", "nope"], "estimator 'nope' must be NAME"),
    (["compare", "{run}", "--repeats", "1"], "repeats must be an integer >= 2, got 1"),
    (["compare", "{run}", "--batch-size", "0"], "batch_size must be an integer in [1, 300]"),
    (["evaluate", "{run}", "--nll-samples", "-1"], "--nll-samples must be >= 0"),
    (["evaluate", "{run}", "--limit", "301"], "--limit must be in [1, 300]")])
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, argv, message):
    assert main([a.format(run=run_dir) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_compare_shows_its_progress_estimator_by_estimator(run_dir, capsys):
    from pyrovae.inference.compare import EstimatorSpec
    from pyrovae.runs.diagnostics import run_compare

    specs = [EstimatorSpec.parse(t) for t in ("analytic", "iwae:3")]
    rows = run_compare(run_dir, specs, repeats=3, batch_size=8, show_progress=True)
    err = capsys.readouterr().err
    assert len(rows) == 2 and "compare" in err and "2/2" in err and "iwae:3" in err
