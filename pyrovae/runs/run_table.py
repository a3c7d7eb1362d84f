"""``pyrovae runs``: every run folder under some folders, in one table.

A run folder is a folder holding a ``config.json`` (:mod:`pyrovae.runs.folders`). For each,
a row gives the config fields that differ between the runs found (those all runs share are
left out: they say nothing; a field an older run lacks counts as its default), the epochs
trained, the last epoch's train and test bounds
(``metrics.jsonl``), the training time (its epochs' seconds summed), and, when ``pyrovae
evaluate`` wrote ``evaluation.json``, the evaluated test ELBO, the test NLL with its standard
error and its bits per dimension. A folder that cannot be read (a damaged ``config.json``, say)
is listed apart, with the reason; the others are still shown.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from pyrovae.runs import jobs  # noqa: F401  (registers the model kinds that migrate asks)
from pyrovae.runs.config import CONFIG_DEFAULTS, migrate
from pyrovae.runs.folders import REPLACED, read_epochs, to_json

RESULT_COLUMNS = ("epochs_trained", "train_elbo", "test_elbo", "eval_test_elbo", "test_nll",
                  "test_nll_se", "bits_per_dim", "seconds")
EVALUATION_KEYS = {"eval_test_elbo": "test_elbo", "test_nll": "test_nll",
                   "test_nll_se": "test_nll_se", "bits_per_dim": "test_nll_bits_per_dim"}


@dataclass
class RunTable:
    """The runs found: ``rows`` (one dict per run: ``run``, the differing config fields, then
    :data:`RESULT_COLUMNS`), ``columns`` in order, ``damaged`` (folder, reason) pairs, and
    ``histories`` (each run's ``metrics.jsonl`` epoch entries, by folder: for the plot)."""

    rows: list[dict] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    histories: dict[str, list[dict]] = field(default_factory=dict)


def find_run_folders(folders: list[Path]) -> list[Path]:
    """Every folder at or under ``folders`` that holds a ``config.json`` (sorted; the old run
    a ``--force`` set aside in ``RUN/.replaced`` is not one)."""
    found = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        for config in folder.rglob("config.json"):
            if REPLACED not in config.parent.parts:
                found.add(config.parent)
    return sorted(found)


def _read_run(folder: Path) -> tuple[dict, dict, list[dict]]:
    """(config, results, epoch entries) of one run folder; ``ValueError`` naming what is
    damaged."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"config.json cannot be read ({type(error).__name__}: {error})") \
            from None
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold a JSON object")
    config = {**CONFIG_DEFAULTS, **migrate(config)}  # an older run: today's fields
    epochs = read_epochs(folder / "metrics.jsonl")
    last = epochs[-1] if epochs else {}
    results = {"epochs_trained": last.get("epoch", 0), "train_elbo": last.get("train_elbo"),
               "test_elbo": last.get("test_elbo"),
               "seconds": sum(m.get("seconds") or 0.0 for m in epochs) if epochs else None}
    evaluation = {}
    if (folder / "evaluation.json").is_file():
        try:
            evaluation = json.loads((folder / "evaluation.json").read_text())
        except ValueError as error:
            raise ValueError(f"evaluation.json cannot be read ({error})") from None
    for column, key in EVALUATION_KEYS.items():
        results[column] = evaluation.get(key) if isinstance(evaluation, dict) else None
    return config, results, epochs


def run_table(folders: list[Path], sort: str | None = None, reverse: bool = False
              ) -> RunTable:
    """The :class:`RunTable` of the run folders at or under ``folders``, sorted by the column
    ``sort`` (ascending unless ``reverse``; runs without a value last)."""
    table = RunTable()
    runs = []
    for folder in find_run_folders(folders):
        try:
            runs.append((folder, *_read_run(folder)))
        except ValueError as error:
            table.damaged.append((str(folder), str(error)))
    names = sorted({k for _, config, _, _ in runs for k in config})
    differing = [k for k in names
                 if len({json.dumps(c.get(k), sort_keys=True) for _, c, _, _ in runs}) > 1]
    table.columns = ["run", *differing, *RESULT_COLUMNS]
    table.rows = [{"run": str(folder), **{k: config.get(k) for k in differing}, **results}
                  for folder, config, results, _ in runs]
    table.histories = {str(folder): epochs for folder, _, _, epochs in runs}
    if sort is not None:
        if sort not in table.columns:
            raise ValueError(f"--sort {sort}: no such column; columns: "
                             f"{', '.join(table.columns)}")
        present = [r for r in table.rows if r.get(sort) is not None]
        missing = [r for r in table.rows if r.get(sort) is None]
        present.sort(key=lambda r: _sort_key(r[sort]), reverse=reverse)
        table.rows = present + missing
    return table


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, json.dumps(value))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def format_table(table: RunTable) -> str:
    """A Markdown table of the rows, then one line per damaged folder."""
    lines = []
    if table.rows:
        lines.append("| " + " | ".join(table.columns) + " |")
        lines.append("|" + "---|" * len(table.columns))
        lines.extend("| " + " | ".join(_cell(row.get(c)) for c in table.columns) + " |"
                     for row in table.rows)
    else:
        lines.append("no readable run folders found")
    lines.extend(f"damaged: {folder}: {reason}" for folder, reason in table.damaged)
    return "\n".join(lines)


def table_csv(table: RunTable) -> str:
    """The rows as CSV (lists and dicts as JSON); damaged folders are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=table.columns, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({c: json.dumps(v) if isinstance(v, (list, dict)) else v
                         for c, v in row.items()})
    return buffer.getvalue()


def table_json(table: RunTable) -> str:
    """``{"columns": [...], "runs": [...], "damaged": [{"run", "reason"}]}`` as strict JSON."""
    return to_json({"columns": table.columns, "runs": table.rows,
                    "damaged": [{"run": f, "reason": r} for f, r in table.damaged]}, indent=2)


def run_labels(table: RunTable) -> dict[str, str]:
    """Each row's run folder -> a label from the config fields that differ between the runs
    (``z_dim=3, prior=vamp``); the folder's name when no field differs, and after the label
    when two runs share it."""
    fields = [c for c in table.columns if c != "run" and c not in RESULT_COLUMNS]
    labels = {row["run"]: ", ".join(f"{k}={_cell(row[k])}" for k in fields) or
              Path(row["run"]).name for row in table.rows}
    repeated = {label for label in labels.values()
                if list(labels.values()).count(label) > 1}
    return {run: f"{label} ({Path(run).name})" if label in repeated else label
            for run, label in labels.items()}

