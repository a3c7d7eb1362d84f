"""Every bad input gives one line naming the problem, exit status 2, and changes no file.

Each case runs against a copy of a finished run folder; the test hashes every file before and
after. docs/RELIABILITY.md lists these cases with the messages observed.
"""

import hashlib
import json
import shutil

import pytest
import torch

from pyrovae.components.data import DATASETS, Dataset, load_dataset
from pyrovae.runs.cli import main
from pyrovae.runs.folders import LOCK_FILE

SMALL = ["--epochs", "1", "--hidden", "16", "--batch-size", "100", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(run), *SMALL]) == 0
    return run


def snapshot(folder):
    """SHA-256 of every file (but the lock, whose note names the last process to hold it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def truncate_checkpoint(run):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])


def corrupt_checkpoint(run):
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[100:400] = bytes(300)
    (run / "checkpoint.pt").write_bytes(bytes(data))


def other_version_checkpoint(run):
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["version"] = 99
    torch.save(state, run / "checkpoint.pt")


def foreign_checkpoint(run):
    torch.save({"model": {}}, run / "checkpoint.pt")


def edit_config(run):
    config = json.loads((run / "config.json").read_text())
    config["z_dim"] = 5
    (run / "config.json").write_text(json.dumps(config))


def corrupted_digits(name, corrupt):
    def load(data_dir, download):
        data = load_dataset("digits")
        corrupt(data.train_x)
        return Dataset(name, data.train_x, data.train_y, data.test_x, data.test_y)

    return load


@pytest.fixture(scope="module", autouse=True)
def corrupted_datasets():
    """Digits with planted NaN / Inf, registered for this module's tests only."""
    DATASETS.register("test-nan", corrupted_digits(
        "test-nan", lambda x: x.view(-1)[:3].fill_(float("nan"))))
    DATASETS.register("test-inf", corrupted_digits(
        "test-inf", lambda x: x.view(-1)[:2].fill_(float("inf"))))
    yield
    DATASETS.unregister("test-nan")
    DATASETS.unregister("test-inf")

# (case, command line with RUN standing for the run folder, damage done first, message)
CASES = [
    ("existing folder", ["train", "--out", "RUN", *SMALL], None,
     "exists and is not empty; pass --resume"),
    ("truncated checkpoint", ["train", "--out", "RUN", "--resume", *SMALL],
     truncate_checkpoint, "cannot be read"),
    ("corrupted checkpoint", ["train", "--out", "RUN", "--resume", *SMALL],
     corrupt_checkpoint, "cannot be read"),
    ("checkpoint of another version", ["train", "--out", "RUN", "--resume", *SMALL],
     other_version_checkpoint, "has format version 99; this pyrovae reads versions 1, 2"),
    ("not a pyrovae checkpoint", ["evaluate", "RUN"], foreign_checkpoint,
     "is not a pyrovae checkpoint"),
    ("incompatible config", ["train", "--out", "RUN", "--resume", *SMALL], edit_config,
     "differs from the config its checkpoint was trained with (in z_dim)"),
    ("force with sigma 0", ["train", "--out", "RUN", "--force", "--sigma", "0", *SMALL], None,
     "sigma must be a finite number > 0, got 0.0"),
    ("force with NaN data", ["train", "--out", "RUN", "--force", "--dataset", "test-nan",
                             *SMALL], None,
     "dataset 'test-nan' training images contain 3 NaN or infinite values"),
    ("force with Inf data", ["train", "--out", "RUN", "--force", "--dataset", "test-inf",
                             *SMALL], None,
     "dataset 'test-inf' training images contain 2 NaN or infinite values"),
    ("force with grey data for Bernoulli", ["train", "--out", "RUN", "--force",
                                            "--likelihood", "bernoulli", *SMALL], None,
     "needs data in {0, 1} (binary); found"),
    ("force with batch too large", ["train", "--out", "RUN", "--force", "--epochs", "1",
                                    "--batch-size", "1498", "--quiet"], None,
     "batch_size 1498 is larger than the data set (1497 training images)"),
    ("force with CUDA absent", ["train", "--out", "RUN", "--force", "--device", "cuda",
                                *SMALL], None, "CUDA is not available"),
    ("epochs 0", ["train", "--out", "RUN", "--force", *SMALL, "--epochs", "0"], None,
     "epochs must be an integer in [1, 1000000], got 0"),
    ("particles 0", ["train", "--out", "RUN", "--force", "--particles", "0", *SMALL], None,
     "particles must be an integer in [1, 10000], got 0"),
    ("lr negative", ["train", "--out", "RUN", "--force", "--lr", "-0.1", *SMALL], None,
     "lr must be a finite number > 0, got -0.1"),
    ("z_dim 0", ["train", "--out", "RUN", "--force", "--z-dim", "0", *SMALL], None,
     "z_dim must be an integer in [1, 1048576], got 0"),
    ("hidden 0", ["train", "--out", "RUN", "--force", "--epochs", "1", "--hidden", "0",
                  "--quiet"], None,
     "hidden must be one or more integers in [1, 1048576]; got [0]"),
    ("unknown prior", ["train", "--out", "RUN", "--force", "--prior", "cauchy", *SMALL], None,
     "prior must be one of"),
    ("unknown likelihood", ["train", "--out", "RUN", "--force", "--likelihood", "poisson",
                            *SMALL], None, "likelihood must be one of"),
    ("unknown estimator", ["train", "--out", "RUN", "--force", "--elbo", "vimco", *SMALL],
     None, "elbo must be one of"),
    ("unknown activation", ["train", "--out", "RUN", "--force", "--activation", "swish",
                            *SMALL], None, "activation must be one of"),
    ("unknown dataset", ["train", "--out", "RUN", "--force", "--dataset", "cifar", *SMALL],
     None, "dataset must be one of"),
    ("skip with the svi stepper", ["train", "--out", "RUN", "--force", "--stepper", "svi",
                                   "--on-nan", "skip", *SMALL], None,
     "on_nan='skip' needs stepper 'fast'"),
    ("sample count 0", ["sample", "RUN", "-n", "0"], None,
     "-n must be an integer in [1, 10000], got 0"),
    ("evaluate batch 0", ["evaluate", "RUN", "--batch-size", "0"], None,
     "--batch-size must be >= 1, got 0"),
    ("not a run folder", ["evaluate", "RUN/figures"], None, "is not a pyrovae run folder"),
]


@pytest.mark.parametrize("case,argv,damage,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(finished_run, tmp_path, capsys, case, argv, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if damage:
        damage(run)
    before = snapshot(run)
    assert main([a.replace("RUN", str(run)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert snapshot(run) == before


def test_config_file_errors(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"z_dimension": 3}))
    for path, message in ((bad_json, "Expecting property name"),
                          (unknown, "unknown config field(s) z_dimension")):
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
