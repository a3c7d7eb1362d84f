"""Kill a training run at random moments: it always resumes, and ends where an uninterrupted
run ends, parameter for parameter (CPU). SIGINT stops cleanly after a checkpoint."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyrovae.runs.checkpoints import load_checkpoint
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.train import train_run

CONFIG = TrainConfig(epochs=40, hidden=[16], batch_size=100)
FLAGS = ["--epochs", "40", "--hidden", "16", "--batch-size", "100", "--quiet"]


def start(run, *extra):
    return subprocess.Popen([sys.executable, "-m", "pyrovae", "train", "--out", str(run),
                             *FLAGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def final_model(run):
    return load_checkpoint(run / "checkpoint.pt")["trainer"]["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = train_run(CONFIG, tmp_path_factory.mktemp("straight") / "run", progress=False)
    return final_model(run), (run / "metrics.jsonl").read_text()


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_moment_then_resume_equals_no_kill(tmp_path, uninterrupted, seed):
    run = tmp_path / "run"
    process = start(run)
    wait_for(run / "checkpoint.pt", process)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(run / "checkpoint.pt")["trainer"]["epoch"]
    resumed = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--out", str(run),
                              "--resume", *FLAGS], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.glob(".*.tmp"))  # a write torn by the kill is cleaned up
    model, metrics = uninterrupted
    for name, value in model.items():
        assert torch.equal(value, final_model(run)[name]), (name, killed_at)

    def elbos(text):
        return [(m["epoch"], m["train_elbo"], m["test_elbo"]) for m in map(json.loads,
                                                                          text.splitlines())]

    assert elbos((run / "metrics.jsonl").read_text()) == elbos(metrics)


def test_sigint_finishes_the_epoch_writes_the_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    process = start(run, "--epochs", "100000")
    wait_for(run / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted after epoch" in err and "--resume" in err
    state = load_checkpoint(run / "checkpoint.pt")["trainer"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert 1 <= state["epoch"] < 100000 and len(lines) == state["epoch"]
