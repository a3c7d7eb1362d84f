"""``pyrovae train --model MODULE:FACTORY``: a user's Pyro model in an ordinary run folder,
with evaluate, sample, check-kl, compare and an exact --resume."""

import json

import pytest

from pyrovae.runs.cli import main
from tests.conftest import REPO

MODELS = str(REPO / "tests" / "user_models.py")
TUTORIAL = ["--model", f"{MODELS}:TutorialVAE", "--model-options", "pixels=64", "z_dim=2",
            "hidden_dim=16"]
FAST = ["--batch-size", "100", "--quiet"]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_users_model_trains_evaluates_samples_and_is_checked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TUTORIAL, "--epochs", "2", *FAST]) == 0
    for name in ("checkpoint.pt", "figures/samples.png", "figures/reconstructions.png",
                 "figures/curves.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model_options"] == {"pixels": 64, "z_dim": 2, "hidden_dim": 16}
    assert main(["evaluate", str(run), "--nll-samples", "20"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["test_nll"] > 0 and evaluation["test_elbo"] < -evaluation["test_nll"]
    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["check-kl", str(run), "--draws", "40", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["agree"] and report["sites"]["latent"]["kl"] == "closed form"
    assert "your model" in report["model"]
    assert main(["compare", str(run), "--repeats", "4", "--estimators", "trace", "iwae:3"]) == 0
    header = (run / "compare.csv").read_text().splitlines()[0].split(",")
    assert {"encoder_snr", "decoder_snr"} <= set(header)


@pytest.mark.parametrize("model", [TUTORIAL, ["--model", f"{MODELS}:flat_pca"]],
                         ids=["nn.Module", "pyro.param functions"])
def test_resume_of_a_users_model_equals_an_uninterrupted_run(tmp_path, model):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [*model, "--elbo", "iwae", "--particles", "2", *FAST]
    assert main(["train", "--out", str(straight), "--epochs", "4", *common]) == 0
    assert main(["train", "--out", str(resumed), "--epochs", "2", *common]) == 0
    assert main(["train", "--out", str(resumed), "--epochs", "4", "--resume", *common]) == 0
    assert [m["test_elbo"] for m in metrics(resumed)] == \
        [m["test_elbo"] for m in metrics(straight)]


def test_a_model_that_cannot_generate_trains_and_says_why_it_cannot_sample(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--model", f"{MODELS}:NoMeanVAE", "--model-options", "pixels=64", "z_dim=2"]
    assert main(["train", "--out", str(run), *argv, "--epochs", "1", *FAST]) == 0
    assert (run / "figures" / "curves.png").is_file()
    assert not (run / "figures" / "samples.png").exists()
    capsys.readouterr()
    assert main(["sample", str(run)]) == 2
    assert "data site 'obs' (Independent) has no mean" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--model", "no_such_module_x:VAE"], "plugin 'no_such_module_x' not found"),
    (["--model", f"{MODELS}:Nope"], "has no class or function 'Nope'"),
    (["--model", f"{MODELS}:"], "must be MODULE:FACTORY"),
    ([*TUTORIAL, "--prior", "vamp"], "--prior configure pyrovae's own VAE"),
    (["--model-options", "z_dim=3"], "need --model MODULE:FACTORY"),
    (["--model", f"{MODELS}:TutorialVAE", "--model-options", "width=3"],
     "calling it with --model-options {'width': 3} failed"),
    (["--model", "gan"], "model must be one of cvae, hvae, vae, or MODULE:FACTORY"),
    (["--model", f"{MODELS}:raising_factory"],
     "failed: RuntimeError: my model is broken"),
])
def test_bad_user_models_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "r"), *argv, "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_a_relative_model_path_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--model", "tests/user_models.py:TutorialVAE",
                 "--model-options", "pixels=64", "z_dim=2", "hidden_dim=8", "--epochs", "1",
                 *FAST]) == 0
    assert json.loads((run / "config.json").read_text())["model"] == f"{MODELS}:TutorialVAE"
    monkeypatch.chdir(tmp_path)  # another folder: evaluate still finds the model
    assert main(["evaluate", str(run)]) == 0


def test_a_user_model_with_its_own_pyro_param_resumes_from_the_command_line(tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    model = ["--model", f"{MODELS}:NoisyTutorialVAE", "--model-options", "pixels=64",
             "z_dim=2", "hidden_dim=8", *FAST]
    assert main(["train", "--out", str(straight), "--epochs", "3", *model]) == 0
    assert main(["train", "--out", str(cut), "--epochs", "1", *model]) == 0
    assert main(["train", "--out", str(cut), "--epochs", "3", "--resume", *model]) == 0
    assert [m["test_elbo"] for m in metrics(cut)] == [m["test_elbo"] for m in metrics(straight)]
