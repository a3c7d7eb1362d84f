"""``pyrovae train --model cvae``: run folder, resume, sample --given, evaluate, bad input."""

import json
import math

import pytest
import torch

from pyrovae.components.guides import GUIDES
from pyrovae.components.priors import PRIORS
from pyrovae.runs.checkpoints import load_checkpoint
from pyrovae.runs.cli import main

FAST = ["--model", "cvae", "--likelihood", "bernoulli", "--binarize", "static",
        "--hidden", "16", "--z-dim", "2", "--batch-size", "100", "--quiet"]


@pytest.mark.parametrize("condition,prior", [("quadrant", "standard_normal"),
                                             ("label", "conditional_normal")])
def test_train_sample_evaluate_a_cvae_run(tmp_path, capsys, condition, prior):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--condition", condition, "--prior", prior,
                 "--epochs", "1", *FAST]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    figures = ["completions.png", "curves.png"] + (["by_label.png"] if condition == "label"
                                                   else [])
    for name in ["config.json", "metrics.jsonl", "checkpoint.pt", "baseline.pt",
                 *(f"figures/{f}" for f in figures)]:
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["condition"] == condition

    (run / "figures" / "completions.png").unlink()
    assert main(["sample", str(run), "--given", "test", "--n", "3", "--rows", "4"]) == 0
    assert (run / "figures" / "completions.png").stat().st_size > 0

    assert main(["evaluate", str(run), "--nll-samples", "20", "--limit", "50"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["n_test"] == 50 and result["condition"] == condition
    assert result["test_elbo"] < 0 and result["baseline_nll"] > 0
    # the IWAE-20 bound is tighter than the ELBO (up to Monte-Carlo noise of the ELBO)
    assert result["test_nll"] < -result["test_elbo"] + 5 * result["test_nll_se"]
    assert result["nll_difference"] == pytest.approx(result["test_nll"] -
                                                     result["baseline_nll"])


def test_cvae_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    args = ["--condition", "half", *FAST]
    assert main(["train", "--out", str(straight), "--epochs", "2", *args]) == 0
    assert main(["train", "--out", str(split), "--epochs", "1", *args]) == 0
    assert main(["train", "--out", str(split), "--epochs", "2", "--resume", *args]) == 0
    lines = [[json.loads(m) for m in (run / "metrics.jsonl").read_text().splitlines()]
             for run in (straight, split)]
    for a, b in zip(*lines):
        assert a["train_elbo"] == b["train_elbo"] and a["test_elbo"] == b["test_elbo"]
    models = [load_checkpoint(run / "checkpoint.pt")["trainer"]["model"]
              for run in (straight, split)]
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    baselines = [torch.load(run / "baseline.pt", weights_only=False)["model"]
                 for run in (straight, split)]
    assert all(torch.equal(baselines[0][k], baselines[1][k]) for k in baselines[0])


def test_old_vae_checkpoint_without_model_fields_resumes(tmp_path):
    run = tmp_path / "old"
    small = ["--hidden", "8", "--batch-size", "100", "--quiet"]
    assert main(["train", "--out", str(run), "--epochs", "1", *small]) == 0
    for path in (run / "config.json", run / "checkpoint.pt"):  # as written before issue 7
        if path.suffix == ".json":
            config = json.loads(path.read_text())
            for key in ("model", "condition"):
                del config[key]
            path.write_text(json.dumps(config))
        else:  # version 1: the payload's fields at the top level, no checksum
            state = {**load_checkpoint(path), "version": 1}
            for key in ("model", "condition"):
                del state["config"][key]
            torch.save(state, path)
    assert main(["train", "--out", str(run), "--epochs", "2", "--resume", *small]) == 0


@pytest.mark.parametrize("argv,message", [
    (["train", "--condition", "quadrant"], "condition 'quadrant' needs --model cvae"),
    (["train", "--prior", "conditional_normal"],
     "prior 'conditional_normal' is P(z|X) and needs a context: use it with --model cvae"),
    (["train", "--model", "cvae"], "model 'cvae' needs condition: one of half, label"),
    (["train", "--model", "cvae", "--condition", "eye"], "got 'eye'"),
    (["train", "--model", "gan"], "model must be one of cvae, hvae, vae"),
])
def test_bad_cvae_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_given_needs_a_cvae_run(tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["train", "--out", str(run), "--epochs", "1", "--hidden", "8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--given", "test"]) == 2
    assert "--given completes inputs of a cvae run" in capsys.readouterr().err


@pytest.mark.parametrize("prior,guide", [(p, "diagonal") for p in PRIORS.names()]
                         + [("standard_normal", g) for g in GUIDES.names() if g != "diagonal"])
def test_every_registered_prior_and_guide_trains_a_cvae_on_the_digits(tmp_path, prior, guide):
    """Through the CLI: one epoch of the half task, then the run loads back and evaluates."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--condition", "half", "--prior", prior,
                 "--guide", guide, "--components", "3", "--epochs", "1", *FAST]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and math.isfinite(history[0]["train_elbo"])
    assert main(["evaluate", str(run), "--limit", "20"]) == 0
    assert math.isfinite(json.loads((run / "evaluation.json").read_text())["test_elbo"])


def test_a_cvae_run_of_the_version_before_the_priors_were_shared_still_loads(tmp_path):
    """config.json with ``cvae_prior: fixed`` and a checkpoint whose fixed prior kept its
    buffers in ``prior.base``: evaluate, sample and resume read it as today's
    ``standard_normal`` prior."""
    run = tmp_path / "old"
    assert main(["train", "--out", str(run), "--condition", "half", "--epochs", "1",
                 *FAST]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["prior"]
    config["cvae_prior"] = "fixed"
    (run / "config.json").write_text(json.dumps(config))
    state = {**load_checkpoint(run / "checkpoint.pt"), "version": 1}  # as written then
    state["config"] = dict(config)
    model = state["trainer"]["model"]
    for name in ("loc", "scale"):
        model[f"cvae.prior.base.{name}"] = model.pop(f"cvae.prior.{name}")
    torch.save(state, run / "checkpoint.pt")
    assert main(["evaluate", str(run), "--limit", "20"]) == 0
    assert main(["train", "--out", str(run), "--condition", "half", "--epochs", "2",
                 "--resume", *FAST]) == 0


def test_compare_and_check_kl_work_on_a_cvae_run(tmp_path, capsys):
    """Both go through the run's job: the parameter groups are the CVAE's own parts, and the
    closed-form KL of conditional_normal against the diagonal guide is checked."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--condition", "half", "--prior",
                 "conditional_normal", "--epochs", "1", *FAST]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--repeats", "3", "--estimators", "trace", "analytic",
                 "--batch-size", "32"]) == 0
    header = (run / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"encoder_snr", "decoder_snr", "prior_snr"} <= set(header)
    assert (run / "figures" / "compare.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["check-kl", str(run), "--draws", "40", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["agree"] and report["kl"] == "closed form"
    assert {"encoder", "decoder", "prior"} <= set(report["gradients"])


def test_a_flag_wins_over_an_old_config_file_it_is_given_with(tmp_path, capsys):
    """``--config`` of an old cvae run (``cvae_prior: learned``) is brought up to date before
    the command line's flags apply, so ``--prior vamp`` is what trains."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": "cvae", "condition": "half", "cvae_prior": "learned",
                               "prior": "standard_normal"}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(old), "--prior", "vamp", "--components", "3",
                 "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert json.loads((run / "config.json").read_text())["prior"] == "vamp"
    capsys.readouterr()
    assert main(["train", "--cvae-prior", "learned", "--out", str(tmp_path / "r")]) == 2
    assert "use --prior standard_normal (was fixed) or --prior conditional_normal" in \
        capsys.readouterr().err
