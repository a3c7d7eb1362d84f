"""``pyrovae runs``: one table of the run folders under some folders (issue 22)."""

import csv
import io
import json
import shutil

import pytest

from pyrovae.runs.cli import main
from pyrovae.runs.folders import write_json, write_metrics
from pyrovae.runs.run_table import run_table

FAST = ["--hidden", "8", "--batch-size", "100", "--quiet", "--epochs", "2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three runs that differ in z_dim (one trained, two copies with their own metrics), one
    of them evaluated, one cvae-free damaged folder, nested one level down."""
    root = tmp_path_factory.mktemp("sweep")
    first = root / "z2"
    assert main(["train", "--out", str(first), *FAST]) == 0
    assert main(["evaluate", str(first), "--nll-samples", "5", "--limit", "50"]) == 0
    for z_dim, bound in ((3, -90.0), (4, -80.0)):
        copy = root / "more" / f"z{z_dim}"
        shutil.copytree(first, copy)
        (copy / "evaluation.json").unlink()
        config = json.loads((copy / "config.json").read_text())
        write_json(copy / "config.json", {**config, "z_dim": z_dim})
        write_metrics(copy, [{"epoch": 1, "train_elbo": bound - 1, "test_elbo": bound - 2,
                              "seconds": 1.0},
                             {"epoch": 2, "train_elbo": bound, "test_elbo": bound + 1,
                              "seconds": 2.0}])
    damaged = root / "broken"
    shutil.copytree(first, damaged)
    (damaged / "config.json").write_text('{"z_dim": 5, ')
    (first / ".replaced").mkdir()  # an old run set aside by --force is not listed
    shutil.copy(first / "config.json", first / ".replaced" / "config.json")
    return root


def test_the_table_shows_the_field_that_differs_and_each_runs_values(sweep, capsys):
    assert main(["runs", str(sweep)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("| run | z_dim | epochs_trained | train_elbo | test_elbo |")
    assert "hidden" not in header and "lr" not in header  # the same in every run
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines()[2:]
            if line.startswith("|")}
    assert len(rows) == 3 and not any(".replaced" in r for r in rows)
    assert "| 3 | 2 | -90.00 | -89.00 |" in rows[str(sweep / "more" / "z3")]
    assert "| 4 | 2 | -80.00 | -79.00 |" in rows[str(sweep / "more" / "z4")]
    evaluation = json.loads((sweep / "z2" / "evaluation.json").read_text())
    assert f"{evaluation['test_nll']:.2f}" in rows[str(sweep / "z2")]
    assert f"damaged: {sweep / 'broken'}: config.json cannot be read" in out


def test_sorting_and_the_csv_and_json_outputs(sweep, capsys):
    assert main(["runs", str(sweep), "--sort", "test_elbo", "--reverse", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["z_dim"] for r in rows] == ["4", "3", "2"]
    assert float(rows[0]["seconds"]) == 3.0
    assert main(["runs", str(sweep), "--sort", "test_nll", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["runs"][0]["z_dim"] == 2  # the only one with an NLL: first
    assert [d["run"] for d in table["damaged"]] == [str(sweep / "broken")]
    table = run_table([sweep], sort="z_dim")
    assert [r["z_dim"] for r in table.rows] == [2, 3, 4]


@pytest.mark.parametrize("argv,message", [
    (["runs", "SWEEP", "--sort", "nope"], "--sort nope: no such column; columns: run, z_dim"),
    (["runs", "SWEEP/z2/config.json"], "is not a folder"),
])
def test_bad_arguments_are_one_line(sweep, capsys, argv, message):
    assert main([a.replace("SWEEP", str(sweep)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_plot_draws_every_run_labelled_by_what_differs(sweep, tmp_path, capsys):
    out = tmp_path / "sweep.png"
    assert main(["plot", str(sweep), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 runs (" in captured.out and all(f"z_dim={z}" in captured.out for z in (2, 3, 4))
    assert f"left out damaged {sweep / 'broken'}" in captured.err
    assert main(["plot", str(sweep), "--out", str(tmp_path / "x.pdf")]) == 2


def test_runs_that_share_a_label_keep_their_folder_names(tmp_path):
    from pyrovae.runs.run_table import RunTable, run_labels

    table = RunTable(rows=[{"run": str(tmp_path / n), "z_dim": 2} for n in ("a", "b")],
                     columns=["run", "z_dim"])
    assert list(run_labels(table).values()) == ["z_dim=2 (a)", "z_dim=2 (b)"]
