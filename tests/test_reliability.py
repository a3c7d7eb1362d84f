"""Reliability, second pass (issue 18): a run folder that two processes, a hand edit, a
damaged file or a kill cannot corrupt. Each case failed before its fix; a subprocess where
it needs a second process or a kill. (The resume-equality case for every estimator is in
test_training.py.)
"""

import errno
import gzip
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from pyrovae.components.data import load_dataset
from pyrovae.runs.cli import main
from pyrovae.runs.folders import LOCK_FILE, REPLACED, write_json
from tests.conftest import REPO

FAST = ["--hidden", "8", "--batch-size", "100", "--quiet"]


def pyrovae(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "pyrovae", *map(str, argv)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def wait_for(condition, timeout=120):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the condition did not come true")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(run), "--epochs", "2", *FAST]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_a_second_training_process_on_a_busy_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pyrovae", "train", "--out", str(run),
                              "--epochs", "100000", *FAST], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file())
        for extra in (["--resume", "--epochs", "200000"], ["--force", "--z-dim", "3"]):
            second = pyrovae("train", "--out", run, *extra, *FAST)
            assert second.returncode == 2, second.stderr
            assert "is in use by another pyrovae process (pid" in second.stderr
        assert json.loads((run / "config.json").read_text())["z_dim"] == 2
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the lock with the process: the folder resumes
    trained = len((run / "metrics.jsonl").read_text().splitlines())
    resumed = pyrovae("train", "--out", run, "--resume", "--epochs", trained + 1, *FAST)
    assert resumed.returncode == 0, resumed.stderr


def test_two_new_runs_started_together_on_one_folder_cannot_both_train(tmp_path):
    run = tmp_path / "new"
    argv = [sys.executable, "-m", "pyrovae", "train", "--out", str(run), "--epochs", "3", *FAST]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another pyrovae process" in loser or "exists and is not empty" in loser
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_evaluate_and_sample_refuse_a_hand_edited_config(run, capsys):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "sigma": 0.5}))
    for argv in (["evaluate", str(run)], ["sample", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "differs from the config its checkpoint was trained with (in sigma)" in err
    assert not (run / "evaluation.json").exists()


@pytest.mark.parametrize("fill", [0.0, math.nan])
def test_damaged_bytes_inside_a_checkpoint_tensor_are_refused(run, capsys, fill):
    outer = torch.load(run / "checkpoint.pt", weights_only=False)
    payload = bytearray(outer["payload"])
    state = torch.load(__import__("io").BytesIO(bytes(payload)), weights_only=False)
    weight = next(v for v in state["trainer"]["model"].values() if v.numel() >= 100)
    start = bytes(payload).find(weight.numpy().tobytes()[:64])
    assert start > 0
    payload[start:start + 400] = struct.pack("<f", fill) * 100  # 400 bytes of one tensor
    torch.save({**outer, "payload": bytes(payload)}, run / "checkpoint.pt")
    for argv in (["evaluate", str(run)], ["train", "--out", str(run), "--resume",
                                          "--epochs", "3", *FAST]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "do not match their SHA-256 checksum" in err and err.count("\n") == 1, err
    assert not (run / "evaluation.json").exists()


def test_a_checkpoint_of_the_first_format_still_loads(run):
    from pyrovae.runs.checkpoints import load_checkpoint

    state = {**load_checkpoint(run / "checkpoint.pt"), "version": 1}  # no checksum then
    torch.save(state, run / "checkpoint.pt")
    assert main(["evaluate", str(run)]) == 0


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--force", "--lr", "1e30", "--epochs", "3",
                 *FAST]) == 1
    err = capsys.readouterr().err
    assert "no epoch finished, so no checkpoint of this run was written" in err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert snapshot(run) == before and not (run / REPLACED).exists()
    assert main(["train", "--out", str(run), "--force", "--epochs", "1", *FAST]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert not (run / REPLACED).exists()


def test_a_force_run_killed_before_its_first_checkpoint_gives_the_old_run_back(run):
    before = snapshot(run)
    slow = ["--hidden", "2048", "2048", "--batch-size", "10", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "pyrovae", "train", "--out", str(run),
                             "--force", "--epochs", "50", *slow], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (run / REPLACED / "checkpoint.pt").is_file())
    proc.kill()
    proc.wait()
    assert not (run / "checkpoint.pt").exists()  # killed in epoch 1: the old run is aside
    resumed = pyrovae("train", "--out", run, "--resume", "--epochs", "3", *FAST)
    assert resumed.returncode == 0, resumed.stderr  # put back, then resumed from epoch 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert (run / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])


def test_force_refuses_a_folder_pyrovae_did_not_write(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "plot.png").write_bytes(b"my figure")
    (folder / "notes.txt").write_text("my notes")
    before = snapshot(folder)
    assert main(["train", "--out", str(folder), "--force", "--epochs", "1", *FAST]) == 2
    assert "is not a pyrovae run folder" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_a_half_made_folder_restarts_as_new(run):
    (run / "checkpoint.pt").unlink()  # killed before its first checkpoint
    (run / "evaluation.json").unlink(missing_ok=True)
    assert main(["train", "--out", str(run), "--epochs", "1", *FAST]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def _idx(*sizes: int) -> bytes:
    data = random.Random(0).randbytes(math.prod(sizes))  # incompressible: a cut bites
    return bytes([0, 0, 8, len(sizes)]) + struct.pack(f">{len(sizes)}i", *sizes) + data


def test_a_corrupt_mnist_archive_is_named_and_leaves_no_partial_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    files = {"train-images-idx3-ubyte": _idx(4, 28, 28), "train-labels-idx1-ubyte": _idx(4),
             "t10k-images-idx3-ubyte": _idx(2, 28, 28), "t10k-labels-idx1-ubyte": _idx(2)}
    for name, data in files.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(data))
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(files[
        "train-images-idx3-ubyte"])[:500])  # cut off
    for _ in range(3):  # the same message every time: nothing half-written counts as data
        with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is damaged"):
            load_dataset("mnist", tmp_path)
        assert not (raw / "train-images-idx3-ubyte").exists()
        assert not list(raw.glob(".*.tmp"))
    (raw / "train-images-idx3-ubyte").write_bytes(b"")  # an empty leftover of old versions
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(files[
        "train-images-idx3-ubyte"]))  # replaced: now it loads
    data = load_dataset("mnist", tmp_path)
    assert data.train_x.shape == (4, 1, 28, 28) and data.test_x.shape == (2, 1, 28, 28)


def test_non_finite_numbers_are_written_as_json_null(tmp_path):
    write_json(tmp_path / "e.json", {"nll": math.nan, "rows": [1.0, math.inf]})
    text = (tmp_path / "e.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"nll": None, "rows": [1.0, None]}


@pytest.mark.parametrize("argv,message", [
    (["train", "--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["train", "--seed", str(2 ** 70)], "seed must be an integer in [0, 4294967295]"),
    (["sample", "RUN", "--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    (["evaluate", "RUN", "--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
])
def test_seeds_are_checked_up_front_with_one_line(run, capsys, argv, message):
    argv = [str(run) if a == "RUN" else a for a in argv]
    out = ["--out", str(run.parent / "new"), *FAST] if argv[0] == "train" else []
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_plugin_with_a_syntax_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("def broken(:\n")
    assert main(["train", "--plugin", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "failed to import: SyntaxError" in err and "line 1" in err and \
        err.count("\n") == 1, err


def test_evaluate_prints_its_result_before_a_write_that_fails(run, capsys):
    (run / "evaluation.json").unlink(missing_ok=True)
    (run / "evaluation.json").mkdir()  # cannot be replaced by a file
    assert main(["evaluate", str(run)]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["test_elbo"] < 0  # the result is not lost
    assert captured.err.count("\n") == 1 and "evaluation.json" in captured.err, captured.err


@pytest.mark.parametrize("argv,message", [
    (["train", "--z-dim", str(10 ** 12)], "z_dim must be an integer in [1, 1048576]"),
    (["train", "--epochs", str(2 ** 70)], "epochs must be an integer in [1, 1000000]"),
    (["train", "--hidden", "8", str(10 ** 9)],
     "hidden must be one or more integers in [1, 1048576]; got [8, "),
    (["train", "--particles", str(10 ** 9)], "particles must be an integer in [1, 10000]"),
    (["sample", "RUN", "-n", str(10 ** 9)], "-n must be an integer in [1, 10000]"),
])
def test_sizes_beyond_reason_are_refused_up_front(run, capsys, argv, message):
    argv = [str(run) if a == "RUN" else a for a in argv]
    out = ["--out", str(run.parent / "new"), "--quiet"] if argv[0] == "train" else []
    before = snapshot(run)
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert snapshot(run) == before and not (run.parent / "new").exists()


@pytest.mark.parametrize("field,value,message", [
    ("hidden", 256, "config field hidden must be a list of integers; got 256"),
    ("z_dim", [2], "config field z_dim must be an integer; got [2]"),
    ("clip_norm", "none", 'config field clip_norm must be a number or null; got "none"'),
    ("hidden", None, "differs from the config its checkpoint was trained with (in hidden)"),
])
def test_a_hand_edited_config_of_the_wrong_type_or_a_missing_field_is_one_line(
        run, capsys, field, value, message):
    config = json.loads((run / "config.json").read_text())
    if value is None:
        del config[field]  # the default, [256], is not what the run trained with ([8])
    else:
        config[field] = value
    write_json(run / "config.json", config)
    for argv in (["evaluate", str(run)], ["sample", str(run)],
                 ["train", "--out", str(run), "--resume", "--epochs", "3"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_resume_with_fewer_epochs_than_trained_is_refused_and_writes_nothing(run, capsys):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has trained 2 epochs, more than --epochs 1" in err and err.count("\n") == 1, err
    assert snapshot(run) == before


def test_resume_without_epochs_keeps_the_saved_total(run, capsys):
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("flags,message", [
    (["--lr", "1"], "--lr 1.0 differs from its 0.003"),
    (["--hidden", "16"], "--hidden [16] differs from its [8]"),
    (["--config", "c.json"], "takes neither --config nor --force"),
])
def test_resume_refuses_a_changed_setting(run, capsys, flags, message):
    before = snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert snapshot(run) == before


def test_a_resumed_run_keeps_the_environment_of_every_session(run):
    first = json.loads((run / "environment.json").read_text())
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]) == 0
    environment = json.loads((run / "environment.json").read_text())
    assert environment["earlier"] == [first] and environment["torch"] == torch.__version__


def test_non_finite_event_lines_survive_a_resume(run):
    event = {"event": "non_finite", "epoch": 3, "step": 4, "bad_steps": 1, "steps": 4,
             "action": "stopped"}  # what an epoch 3 stopped by the NaN guard appended
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(event) + "\n")
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("event", m["epoch"]) for m in lines] == [1, 2, "non_finite", 3]


def test_sample_out_may_be_a_folder_and_must_otherwise_be_a_png(run, capsys):
    folder = run.parent / "figs"
    folder.mkdir()
    assert main(["sample", str(run), "--out", str(folder)]) == 0
    assert (folder / "samples.png").stat().st_size > 0
    assert str(folder / "samples.png") in capsys.readouterr().out
    assert main(["sample", str(run), "--out", str(run.parent / "x.pdf")]) == 2
    assert "must name a .png file or an existing folder" in capsys.readouterr().err


def test_a_killed_writers_temporary_file_goes_at_the_next_write_of_that_file(run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    torn = run / f".evaluation.json.{dead}.abcd1234.tmp"  # a SIGKILLed evaluate's
    live = run / f".evaluation.json.{os.getpid()}.efgh5678.tmp"  # a writer still running
    torn.write_text("{")
    live.write_text("{")
    assert main(["evaluate", str(run)]) == 0
    assert not torn.exists() and live.exists()
    assert json.loads((run / "evaluation.json").read_text())["test_elbo"] < 0


def _fail_fsync(monkeypatch, after: int = 0):
    """``os.fsync`` raises ENOSPC (a full disk) from its ``after + 1``-th call on."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_during_evaluate_prints_the_result_and_keeps_the_old_file(
        run, capsys, monkeypatch):
    assert main(["evaluate", str(run)]) == 0
    old = (run / "evaluation.json").read_bytes()
    capsys.readouterr()
    _fail_fsync(monkeypatch)
    assert main(["evaluate", str(run), "--seed", "1"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["seed"] == 1  # printed: the result is not lost
    assert captured.err.count("\n") == 1 and "No space left on device" in captured.err and \
        str(run / "evaluation.json") in captured.err, captured.err
    assert (run / "evaluation.json").read_bytes() == old
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_during_training_keeps_the_last_checkpoint_and_resumes_exactly(
        finished, tmp_path, capsys, monkeypatch):
    run = tmp_path / "full"
    _fail_fsync(monkeypatch, after=4)  # config, environment, metrics, epoch 1's checkpoint
    assert main(["train", "--out", str(run), "--epochs", "2", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and \
        str(run / "checkpoint.pt") in err, err
    assert not list(run.glob(".*.tmp"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    bounds = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (folder / "metrics.jsonl").read_text().splitlines()]
              for folder in (run, finished)]
    assert bounds[0] == bounds[1]  # the same numbers as a run the full disk never hit


def test_a_read_only_folder_is_one_line_naming_the_file(run, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and \
        str(run / "figures" / "samples.png") in err, err


def test_a_config_written_with_tuples_round_trips_and_resumes(tmp_path):
    from pyrovae.runs.config import TrainConfig
    from pyrovae.runs.train import train_run

    config = TrainConfig(epochs=1, hidden=(8,), batch_size=100)
    assert TrainConfig.from_dict(config.to_dict()).hidden == [8]
    run = train_run(config, tmp_path / "run", progress=False)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
