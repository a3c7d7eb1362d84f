"""The pyrovae command: train, sample, evaluate, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest
import torch

from pyrovae.components.data import DATASETS, Dataset, load_dataset
from pyrovae.runs.cli import main

FAST = ["--epochs", "1", "--hidden", "16", "--batch-size", "100", "--quiet"]


def test_train_sample_evaluate_write_every_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--z-dim", "2", *FAST]) == 0
    assert "trained 1 epochs" in capsys.readouterr().out
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "figures/samples.png",
                 "figures/reconstructions.png", "figures/curves.png", "figures/latent.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"epoch", "train_elbo", "test_elbo", "seconds"} <= set(metrics)

    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["evaluate", str(run)]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["n_test"] == 300 and evaluation["test_elbo"] < 0
    assert abs(evaluation["test_elbo"] - metrics["test_elbo"]) < 5  # same model, new draws


def test_z_dim_above_two_draws_no_latent_map(tmp_path):
    assert main(["train", "--out", str(tmp_path / "r"), "--z-dim", "3", *FAST]) == 0
    assert not (tmp_path / "r" / "figures" / "latent.png").exists()


@pytest.fixture
def nan_dataset():
    def load(data_dir, download):
        data = load_dataset("digits")
        data.train_x[0, 0, 0, 0] = float("nan")
        return Dataset("nan-digits", data.train_x, data.train_y, data.test_x, data.test_y)

    DATASETS.register("nan-digits", load)
    yield "nan-digits"
    DATASETS.unregister("nan-digits")


@pytest.mark.parametrize("flags,message", [
    (["--dataset", "svhn"], "dataset must be one of digits, fashion-mnist, kmnist, mnist, "
                            "photo-patches; "
                            "got 'svhn'"),
    (["--sigma", "0"], "sigma must be a finite number > 0, got 0.0"),
    (["--z-dim", "0"], "z_dim must be an integer in [1, 1048576], got 0"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
    (["--batch-size", "5000"], "batch_size 5000 is larger than the data set (1497"),
    (["--likelihood", "bernoulli"], "likelihood 'bernoulli' needs data in {0, 1} (binary); "
                                    "found"),
    (["--z-dim", "two"], "argument --z-dim: invalid int value: 'two'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FAST, *flags]) == 2 if "two" not in flags \
        else _exits_2(["train", "--out", str(run), *FAST, *flags])
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not run.exists()


def _exits_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code == 2


def test_data_with_nan_is_refused(tmp_path, capsys, nan_dataset):
    assert main(["train", "--out", str(tmp_path / "r"), "--dataset", nan_dataset, *FAST]) == 2
    assert "dataset 'nan-digits' training images contain 1 NaN or infinite values" in \
        capsys.readouterr().err


def test_existing_run_folder_needs_resume_or_force(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FAST]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(run), *FAST]) == 2
    assert "exists and is not empty; pass --resume" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert main(["train", "--out", str(run), "--resume", *FAST[:1], "2", *FAST[2:]]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--out", str(run), "--force", *FAST]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_console_entry_point_help_lists_every_flag():
    out = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--dataset", "--data-dir", "--download", "--binarize", "--likelihood",
                 "--sigma", "--z-dim", "--hidden", "--epochs", "--batch-size", "--lr",
                 "--seed", "--device", "--out", "--resume", "--force"):
        assert flag in out, flag
    failed = subprocess.run([sys.executable, "-m", "pyrovae", "sample", "/nonexistent"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "not a pyrovae run folder" in failed.stderr


def test_sampled_images_are_decoder_means_in_range(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FAST]) == 0
    from pyrovae.runs.jobs import load_run

    vae, _ = load_run(run)
    images = vae.sample(4)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()
