"""TensorBoard events of a run (issue 22): the tags and steps, read back with tensorboard's
EventAccumulator; no step twice after a kill past the checkpoint and a resume."""

import logging
import shutil

import pytest

from pyrovae.runs.cli import main

pytest.importorskip("tensorboard", reason="tensorboard is not installed "
                    "(pip install pyrovae[tensorboard])")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

FAST = ["--hidden", "8", "--batch-size", "100", "--quiet"]


def events(run):
    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    return accumulator


def test_a_run_writes_its_scalars_images_and_hparams(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "3", *FAST]) == 0
    acc = events(run)
    tags = acc.Tags()
    assert {"elbo/train", "elbo/test", "beta", "seconds", "skipped_steps", "lr"} <= \
        set(tags["scalars"])
    assert [e.step for e in acc.Scalars("elbo/test")] == [1, 2, 3]
    assert all(e.value == pytest.approx(3e-3) for e in acc.Scalars("lr"))
    assert {"samples", "reconstructions"} <= set(tags["images"])  # the last epoch's
    assert [e.step for e in acc.Images("samples")] == [3]


def test_no_step_twice_after_a_kill_past_the_checkpoint_and_a_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "2", *FAST]) == 0
    saved = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl")}
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]) == 0
    first_three = events(run).Scalars("elbo/test")[2].value
    for name, data in saved.items():  # killed after epoch 3's events, before its checkpoint
        (run / name).write_bytes(data)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 0
    steps = [e.step for e in events(run).Scalars("elbo/test")]
    assert steps == [1, 2, 3, 4]
    # the same epoch 3 again (the resume is exact), written once
    assert events(run).Scalars("elbo/test")[2].value == pytest.approx(first_three, abs=1e-4)


def test_no_tensorboard_writes_nothing_and_a_missing_package_is_a_note(tmp_path, caplog,
                                                                      monkeypatch):
    run = tmp_path / "off"
    assert main(["train", "--out", str(run), "--epochs", "1", "--no-tensorboard", *FAST]) == 0
    assert not (run / "tensorboard").exists()
    import pyrovae.runs.train as train_module

    monkeypatch.setattr(train_module, "tensorboard_available", lambda: False)
    shutil.rmtree(run)
    with caplog.at_level(logging.WARNING, logger="pyrovae.runs.train"):
        assert main(["train", "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert "tensorboard is not installed" in caplog.text
    assert not (run / "tensorboard").exists()
