"""``pyrovae compare``: ELBO estimators side by side on one batch of test data.

Every estimator is given as ``NAME[:K][+sf]`` (``iwae:50``, ``trace+sf``: K particles, the
score-function switch) and evaluated R times on the same batch x of B images, with the same
trained model. Per estimator (one row):

- ``bound``: mean over the R repeats of the estimate, nats per datum (the unweighted bound:
  the ELBO for KL estimators, L_alpha,K for the importance-weighted ones); ``bound_sd``: its
  standard deviation across repeats (the Monte-Carlo noise of one estimate on this batch);
- for each parameter group g (``encoder``, ``decoder``, and a learnable prior's or guide's):
  ``g_grad_var`` = mean over the group's elements j of Var_R[d bound / d theta_j], and
  ``g_snr`` = mean over j of |E_R[d bound / d theta_j]| / sd_R[d bound / d theta_j]
  (Rainforth et al., 2018; elements whose gradient never varies are left out);
- ``ms_per_step``: wall time of one loss and backward pass (no optimiser), the median of
  the R passes (robust to a busy machine), after one warm-up pass.

The other columns are the estimator's :class:`~pyrovae.estimators.EstimatorAxes`, so a new
estimator gets a described row without touching this module.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyrovae.check_kl import Moments, parameter_groups
from pyrovae.estimators import ESTIMATORS, Estimator, EstimatorAxes, build_estimator

IMPORTANCE_PARTICLES = (5, 50)  # default K of the importance-weighted estimators


@dataclass(frozen=True)
class EstimatorSpec:
    """One row of a comparison: an estimator name, its particles K, the score-function switch."""

    name: str
    particles: int = 1
    score_function: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}:{self.particles}" + ("+sf" if self.score_function else "")

    @classmethod
    def parse(cls, text: str) -> EstimatorSpec:
        """``NAME[:K][+sf]``; ``ValueError`` naming the text and the known names."""
        body, plus, suffix = text.partition("+")
        name, colon, count = body.partition(":")
        known = ESTIMATORS.names()
        if name not in known or (plus and suffix != "sf") or (colon and not count.isdigit()) \
                or (colon and int(count) < 1):
            raise ValueError(f"estimator {text!r} must be NAME[:K][+sf] with NAME one of "
                             f"{', '.join(known)} and K an integer >= 1")
        return cls(name, int(count) if colon else 1, bool(plus))

    def build(self, alpha: float = 0.5) -> Estimator:
        return build_estimator(self.name, self.particles, alpha=alpha,
                               score_function=self.score_function)


def default_specs() -> list[EstimatorSpec]:
    """Every registered estimator (the importance-weighted ones at K = 5 and 50), and the
    score-function versions of ``trace`` and ``iwae:5`` beside their pathwise ones."""
    specs = []
    for name in ESTIMATORS.names():
        weighted = ESTIMATORS.get(name).AXES.importance_weighted
        specs += [EstimatorSpec(name, k) for k in (IMPORTANCE_PARTICLES if weighted else (1,))]
    specs += [EstimatorSpec("trace", 1, True), EstimatorSpec("iwae", 5, True)]
    return specs


def gradient_moments(vae, x: torch.Tensor, estimator: Estimator, repeats: int
                     ) -> tuple[list[float], dict[str, Moments], list[float]]:
    """R estimates on batch ``x``: the bounds (nats per datum), the :class:`Moments` of the
    gradient of the per-datum bound for each parameter group, and the seconds per pass."""
    groups = parameter_groups(vae)
    params = [p for group in groups.values() for p in group]
    moments = {name: Moments() for name in groups}
    bounds, seconds = [], []
    for repeat in range(repeats + 1):  # the first pass warms up and is not counted
        start = time.perf_counter()
        loss = estimator.differentiable_loss(vae.model, vae.guide, x) / len(x)
        grads = torch.autograd.grad(-loss, params, allow_unused=True)
        flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, params)]
        elapsed = time.perf_counter() - start
        if repeat == 0:
            continue
        seconds.append(elapsed)
        bounds.append(-float(loss.detach()))
        for name, group in groups.items():
            moments[name].add(torch.cat(flat[:len(group)]))
            flat = flat[len(group):]
    return bounds, moments, seconds


def compare_estimators(vae, x: torch.Tensor, specs: list[EstimatorSpec] | None = None,
                       repeats: int = 50, alpha: float = 0.5) -> list[dict]:
    """One row per spec (see the module docstring), on batch ``x`` (``(B, *data_shape)``)."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    estimators = [(spec, spec.build(alpha)) for spec in specs or default_specs()]
    rows = []
    with pyro.validation_enabled(False):  # as in training: validation reads values on the host
        for spec, estimator in estimators:
            bounds, moments, seconds = gradient_moments(vae, x, estimator, repeats)
            row = {"estimator": spec.label, **estimator.axes.row(),
                   "bound": sum(bounds) / repeats,
                   "bound_sd": float(torch.tensor(bounds, dtype=torch.float64).std())}
            for group, m in moments.items():
                sd = m.var.sqrt()
                varying = sd > 0
                row[f"{group}_grad_var"] = float(m.var.mean())
                row[f"{group}_snr"] = float((m.mean.abs()[varying] / sd[varying]).mean()) \
                    if bool(varying.any()) else math.nan
            row["ms_per_step"] = 1000 * statistics.median(seconds)
            rows.append(row)
    return rows


AXIS_COLUMNS = [f.name for f in dataclasses.fields(EstimatorAxes)]
MEASURED = [("bound", "{:.3f}"), ("bound_sd", "{:.3f}"), ("encoder_grad_var", "{:.3g}"),
            ("encoder_snr", "{:.3f}"), ("decoder_grad_var", "{:.3g}"), ("decoder_snr", "{:.3f}"),
            ("ms_per_step", "{:.1f}")]


def format_table(rows: list[dict]) -> str:
    """A plain-text table: the estimator, its axes, then the measured columns."""
    columns = ["estimator", *AXIS_COLUMNS, *(name for name, _ in MEASURED)]
    formats = dict(MEASURED)
    cells = [[formats.get(c, "{}").format(row.get(c, math.nan)) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths)))
             for line in [columns, *cells]]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Every column of every row (parameter groups beyond encoder and decoder included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_comparison(rows: list[dict], path: str | Path) -> Path:
    """Four panels, one bar per estimator: bound +- sd, encoder SNR, decoder SNR, ms/step."""
    from pyrovae.plots import _save, plt

    labels = [row["estimator"] for row in rows]
    panels = [("bound", "bound_sd", "bound, nats per datum (+- sd across repeats)"),
              ("encoder_snr", None, "encoder gradient SNR"),
              ("decoder_snr", None, "decoder gradient SNR"),
              ("ms_per_step", None, "ms per loss + backward")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.4 * len(rows) + 1.5),
                             sharey=True)
    for ax, (key, error, title) in zip(axes, panels):
        values = [row[key] for row in rows]
        if error:  # a bound is a point on an axis of nats, not a bar from 0
            ax.errorbar(values, labels, xerr=[row[error] for row in rows], fmt="o")
        else:
            ax.barh(labels, values)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    return _save(fig, path)


def run_compare(run_dir: str | Path, specs: list[EstimatorSpec] | None = None,
                repeats: int = 50, batch_size: int = 64, seed: int = 0,
                device: str = "auto", alpha: float | None = None) -> list[dict]:
    """:func:`compare_estimators` on the first ``batch_size`` test images of a run folder;
    writes ``RUN_DIR/compare.csv`` and ``RUN_DIR/figures/compare.png``. ``alpha`` defaults
    to the run's (``renyi``'s order)."""
    from pyrovae.data import load_dataset
    from pyrovae.runs import load_run, prepare_data
    from pyrovae.training import resolve_device

    resolved = resolve_device(device)
    vae, config = load_run(run_dir, str(resolved))
    data = prepare_data(config, vae, load_dataset(config.dataset, config.data_dir), resolved)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) \
            or not 1 <= batch_size <= len(data.test_x):
        raise ValueError(f"batch_size must be an integer in [1, {len(data.test_x)}] (the test "
                         f"set), got {batch_size!r}")
    pyro.set_rng_seed(seed)
    rows = compare_estimators(vae, data.test_x[:batch_size], specs, repeats,
                              config.alpha if alpha is None else alpha)
    write_csv(rows, Path(run_dir) / "compare.csv")
    plot_comparison(rows, Path(run_dir) / "figures" / "compare.png")
    return rows
