"""``pyrovae compare``: ELBO estimators side by side on one batch of test data.

Every estimator is given as ``NAME[:K][+sf]`` (``iwae:50``, ``trace+sf``: K particles, the
score-function switch) and evaluated R times on the same batch x of B images, with the same
trained model. Per estimator (one row):

- ``bound``: mean over the R repeats of the estimate, nats per datum (the unweighted bound:
  the ELBO for KL estimators, L_alpha,K for the importance-weighted ones); ``bound_sd``: its
  standard deviation across repeats (the Monte-Carlo noise of one estimate on this batch);
- for each parameter group g (:func:`~pyrovae.inference.statistics.parameter_groups`: the
  module's parts, ``encoder``, ``decoder``, a learnable prior's or guide's; for a user's
  pair its ``pyro.module`` names, else ``guide`` and ``model``):
  ``g_grad_var`` = mean over the group's elements j of Var_R[d bound / d theta_j], and
  ``g_snr`` = mean over j of |E_R[d bound / d theta_j]| / sd_R[d bound / d theta_j]
  (Rainforth et al., 2018; elements whose gradient never varies are left out);
- ``ms_per_step``: wall time of one loss and backward pass (no optimiser), the median of
  the R passes (robust to a busy machine), after one warm-up pass.

The other columns are the estimator's :class:`~pyrovae.inference.elbo.EstimatorAxes`, so a new
estimator gets a described row without touching this module.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import pyro
import torch

from pyrovae.components.validation import check_int
from pyrovae.inference.estimators import ESTIMATORS, Estimator, EstimatorAxes, build_estimator
from pyrovae.inference.pair import Batch, as_args, num_data, set_up_pair
from pyrovae.inference.statistics import Moments, grouped_gradients, parameter_groups

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


def gradient_moments(vae, x: Batch, estimator: Estimator, repeats: int
                     ) -> tuple[list[float], dict[str, Moments], list[float]]:
    """R estimates on batch ``x``: the bounds (nats per datum), the :class:`Moments` of the
    gradient of the per-datum bound for each parameter group, and the seconds per pass."""
    groups = parameter_groups(vae)
    moments = {name: Moments() for name in groups}
    bounds, seconds = [], []
    for repeat in range(repeats + 1):  # the first pass warms up and is not counted
        start = time.perf_counter()
        loss = estimator.differentiable_loss(vae.model, vae.guide, *as_args(x)) / num_data(x)
        flat = grouped_gradients(-loss, groups)
        elapsed = time.perf_counter() - start
        if repeat == 0:
            continue
        seconds.append(elapsed)
        bounds.append(-float(loss.detach()))
        for name, value in flat.items():
            moments[name].add(value)
    return bounds, moments, seconds


def compare_estimators(vae, x: Batch, specs: list[EstimatorSpec] | None = None,
                       repeats: int = 50, alpha: float = 0.5, progress=None) -> list[dict]:
    """One row per spec (see the module docstring), on batch ``x`` (``(B, *data_shape)``, or
    a tuple of the model's tensor arguments). ``progress(label)``, if given, is called as
    each estimator is done."""
    check_int(repeats, "repeats", minimum=2)
    vae = set_up_pair(vae, x)  # any pair: every parameter, in its groups
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
            if progress is not None:
                progress(spec.label)
    return rows


AXIS_COLUMNS = [f.name for f in dataclasses.fields(EstimatorAxes)]
GROUP_COLUMNS = (("_grad_var", "{:.3g}"), ("_snr", "{:.3f}"))  # per parameter group


def format_table(rows: list[dict]) -> str:
    """A plain-text table: the estimator, its axes, then the measured columns (the bound,
    each parameter group's gradient variance and SNR, the time per step)."""
    groups = list(dict.fromkeys(key[:-len("_snr")] for row in rows for key in row
                                if key.endswith("_snr")))
    measured = [("bound", "{:.3f}"), ("bound_sd", "{:.3f}"),
                *((group + suffix, fmt) for group in groups for suffix, fmt in GROUP_COLUMNS),
                ("ms_per_step", "{:.1f}")]
    columns = ["estimator", *AXIS_COLUMNS, *(name for name, _ in measured)]
    formats = dict(measured)
    cells = [[formats.get(c, "{}").format(row.get(c, math.nan)) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths)))
             for line in [columns, *cells]]
    return "\n".join(lines)
