"""``pyrovae check-kl`` and ``pyrovae compare`` on a run folder (or a fresh model).

The statistics are the inference layer's (:mod:`pyrovae.inference.check_kl`,
:mod:`pyrovae.inference.compare`); here the run's job loads the trained model/guide pair and
its test data, and the results are written to the run folder.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.components.validation import check_int
from pyrovae.inference.check_kl import check_kl
from pyrovae.inference.compare import EstimatorSpec, compare_estimators, default_specs
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.folders import atomic_write
from pyrovae.runs.jobs import job_for_run
from pyrovae.runs.plots import plot_comparison
from pyrovae.runs.vae_job import build_vae
from pyrovae.training.trainer import resolve_device

FRESH_SHAPE = (1, 8, 8)  # the digits images, for a freshly initialised model


def run_check_kl(run_dir: str | Path | None = None, batch_size: int | None = None,
                 draws: int = 200, seed: int = 0, device: str = "auto",
                 alpha: float = 1e-3) -> dict:
    """:func:`~pyrovae.inference.check_kl.check_kl` on the first ``batch_size`` test data of a
    run folder, with its particles; or, with no ``run_dir``, on a freshly initialised model
    (default :class:`~pyrovae.runs.config.TrainConfig`) and a batch drawn from that model's
    own prior predictive P(X), so the data suit any likelihood. ``batch_size`` defaults to
    the config's. The report gains ``model``, ``seed``, ``estimator`` and ``device``."""
    resolved = resolve_device(device)
    pyro.set_rng_seed(seed)
    if run_dir is None:
        config = TrainConfig()
        vae = build_vae(config, FRESH_SHAPE).to(resolved)
        size = config.batch_size if batch_size is None else batch_size
        _check_batch_size(size, None)
        with torch.no_grad():
            x = vae.output(vae.prior((size,)).sample()).sample()
        model = (f"freshly initialised model (default config: z_dim {config.z_dim}, hidden "
                 f"{config.hidden}, {config.likelihood}), on {size} draws of its own P(X)")
    else:
        job = job_for_run(run_dir, resolved)
        config = job.config
        vae, test_x = job.test_pair(Path(run_dir))
        size = config.batch_size if batch_size is None else batch_size
        _check_batch_size(size, len(test_x))
        x = test_x[:size]
        model = f"run {run_dir} ({config.dataset}, {job.summary()}), first {size} test images"
    report = check_kl(vae, x, draws, config.particles, alpha)
    return {"model": model, "seed": seed, "estimator": config.elbo, "device": str(resolved),
            **report}


def _check_batch_size(size, available: int | None) -> None:
    """``size`` an integer >= 1 and, with ``available`` test data, at most that many."""
    if available is None:
        check_int(size, "batch_size")
    elif isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= available:
        raise ValueError(f"batch_size must be an integer in [1, {available}] (the test set), "
                         f"got {size!r}")


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Every column of every row (parameter groups beyond encoder and decoder included),
    written atomically."""
    path = Path(path)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    return path


def run_compare(run_dir: str | Path, specs: list[EstimatorSpec] | None = None,
                repeats: int = 50, batch_size: int = 64, seed: int = 0,
                device: str = "auto", alpha: float | None = None,
                show_progress: bool | None = None) -> list[dict]:
    """:func:`~pyrovae.inference.compare.compare_estimators` on the first ``batch_size`` test
    data of a run folder; writes ``RUN_DIR/compare.csv`` and ``RUN_DIR/figures/compare.png``.
    ``alpha`` defaults to the run's (``renyi``'s order). A progress bar (estimators done)
    shows on a terminal (``show_progress=None``), or as asked."""
    job = job_for_run(run_dir, resolve_device(device))
    pair, test_x = job.test_pair(Path(run_dir))
    _check_batch_size(batch_size, len(test_x))
    pyro.set_rng_seed(seed)
    specs = specs or default_specs()
    with tqdm(total=len(specs), unit="estimator", desc="compare",
              disable=not (sys.stderr.isatty() if show_progress is None
                           else show_progress)) as bar:
        def done(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        rows = compare_estimators(pair, test_x[:batch_size], specs, repeats,
                                  job.config.alpha if alpha is None else alpha, done)
    write_csv(rows, Path(run_dir) / "compare.csv")
    plot_comparison(rows, Path(run_dir) / "figures" / "compare.png")
    return rows
