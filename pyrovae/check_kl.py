"""``pyrovae check-kl``: the analytic-KL ELBO against Pyro's Monte-Carlo ``Trace_ELBO``.

Both estimators score the same N draws z ~ Q(z|X) (common random numbers: one set of Pyro
traces per draw, scored by each). On draw i, with t_i the ``trace`` ELBO and a_i the
``analytic`` one,

    d_i = t_i - a_i = sum over latent sites of [log P(z_i) - log Q(z_i)] + D[Q || P],

and E[d_i] = 0 exactly when the closed-form KL is right, since E_Q[log Q - log P] = D[Q || P].
The reconstruction term log P(X|z_i) is shared and cancels, so the paired test is far more
sensitive than comparing two independent means. The same holds, element by element, for the
gradients of the two ELBOs with respect to every parameter.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import pyro
import torch

from pyrovae.estimators import build_estimator
from pyrovae.kl import closed_form_kl
from pyrovae.model import VAE

MIN_DRAWS = 20  # the t quantile below is accurate to 1e-2 from 19 degrees of freedom
FRESH_SHAPE = (1, 8, 8)  # the digits images, for a freshly initialised model

RULE = """\
Tolerance: the two estimators score the same N draws z ~ Q(z|X), so the per-draw difference
d = trace - analytic has expectation exactly 0 when the closed-form KL is right.
  value:    z = mean(d) / se(d), se = sd(d)/sqrt(N); disagreement when |z| > t(alpha/2),
            t(p) the upper-p quantile of Student's t with N - 1 degrees of freedom (3.34
            for alpha = 1e-3, N = 200): a correct model fails with probability alpha when
            the d are normal (N >= 100 advised).
  gradient: the same z for each element of each parameter tensor (m elements in all);
            disagreement when max |z| > t(alpha/(2m)) (Bonferroni: a correct model fails
            with probability <= alpha, whatever the correlations). Elements whose
            difference is exactly 0 on every draw (the decoder's: the KL does not touch it)
            count as z = 0.
Exit status: 0 agree, 1 disagree, 2 bad input."""


class Moments:
    """Running mean and variance (Welford) of equally shaped tensors, accumulated in float64."""

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self._m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (value - self.mean)

    @property
    def var(self) -> torch.Tensor:
        """Unbiased per-element variance of one value."""
        return self._m2 / (self.n - 1)

    @property
    def se(self) -> torch.Tensor:
        """Standard error of the mean."""
        return (self.var / self.n).sqrt()


def parameter_groups(vae: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters of each top-level part of the model (encoder, decoder, prior, ...)."""
    groups = {name: list(child.parameters()) for name, child in vae.named_children()}
    return {name: params for name, params in groups.items() if params}


@dataclass
class SharedDraws:
    """Estimators scored on the same draws.

    Attributes:
        values: per estimator, its ELBO (summed over the batch, nats) on each draw, ``(N,)``.
        grads: per estimator and parameter group, :class:`Moments` of the ELBO's gradient
            (the group's parameters flattened and concatenated).
        grad_diffs: per estimator after the first, per group, :class:`Moments` of its
            gradient minus the first estimator's, draw by draw.
    """

    values: dict[str, torch.Tensor]
    grads: dict[str, dict[str, Moments]]
    grad_diffs: dict[str, dict[str, Moments]]


def shared_draws(vae: VAE, x: torch.Tensor, names=("analytic", "trace"), draws: int = 200,
                 particles: int = 1) -> SharedDraws:
    """Score the estimators ``names`` on ``draws`` shared draws of the guide for batch ``x``.

    Each draw is one estimate with ``particles`` particles (the first estimator's traces),
    so each estimator's per-draw spread is that of the estimator as used in training.
    """
    estimators = {name: build_estimator(name, particles) for name in names}
    groups = parameter_groups(vae)
    params = [p for group in groups.values() for p in group]
    values = {name: [] for name in names}
    grads = {name: {group: Moments() for group in groups} for name in names}
    diffs = {name: {group: Moments() for group in groups} for name in names[1:]}
    for _ in range(draws):
        losses = dict.fromkeys(names, 0.0)
        for model_trace, guide_trace in estimators[names[0]].traces(vae.model, vae.guide, x):
            for name, estimator in estimators.items():
                losses[name] = losses[name] + estimator.particle_loss(model_trace, guide_trace)
        flat = {}
        for i, name in enumerate(names):
            values[name].append(-losses[name].detach())
            g = torch.autograd.grad(losses[name], params, retain_graph=i < len(names) - 1,
                                    allow_unused=True)
            g = [-gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g, params)]
            flat[name] = _split(g, groups)
            for group, value in flat[name].items():
                grads[name][group].add(value)
        for name in names[1:]:
            for group in groups:
                diffs[name][group].add(flat[name][group].double() - flat[names[0]][group])
    return SharedDraws({k: torch.stack(v).double() for k, v in values.items()}, grads, diffs)


def _split(flat_grads: list[torch.Tensor], groups: dict) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, params in groups.items():
        out[name] = torch.cat([g.reshape(-1) for g in flat_grads[start:start + len(params)]])
        start += len(params)
    return out


def student_t_quantile(upper: float, dof: int) -> float:
    """t with P(T > t) = ``upper`` for Student's T with ``dof`` degrees of freedom.

    The Cornish-Fisher expansion around the normal quantile z (Abramowitz & Stegun 26.7.5);
    within 1e-2 of the exact value for dof >= 19 down to upper = 1e-9.
    """
    z = NormalDist().inv_cdf(1 - upper)
    terms = ((z ** 3 + z) / 4,
             (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(term / dof ** (i + 1) for i, term in enumerate(terms))


def z_scores(mean: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """mean / se, with 0 where both are 0 (a difference that is exactly 0 on every draw)."""
    return torch.where(se > 0, mean / se.clamp_min(1e-300),
                       torch.where(mean == 0, 0.0, math.inf))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, inf (or nan for 0/0) when the denominator is 0."""
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


def check_kl(vae: VAE, x: torch.Tensor, draws: int = 200, particles: int = 1,
             alpha: float = 1e-3) -> dict:
    """Compare ``analytic`` with ``trace`` on the batch ``x`` (see :data:`RULE`); a report.

    The model is copied and evaluated in float64. Returns a JSON-ready dict: ``value``
    (mean, s.e., per-draw sd of each ELBO in nats per datum; the paired difference and its
    z), ``gradients`` (per parameter group: elements, relative error and cosine of the mean
    gradients, max |z|, per-draw sd ratio), the limits, and ``agree``.
    """
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < MIN_DRAWS:
        raise ValueError(f"draws must be an integer >= {MIN_DRAWS}, got {draws!r}")
    if not (isinstance(alpha, float) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    vae = copy.deepcopy(vae).to(torch.float64)
    kl = kl_method(vae, x.to(torch.float64))
    result = shared_draws(vae, x.to(torch.float64), ("analytic", "trace"), draws, particles)
    batch = len(x)
    analytic, trace = (result.values[k] / batch for k in ("analytic", "trace"))
    diff = trace - analytic
    se_diff = float(diff.std()) / math.sqrt(draws)
    z_value = float(z_scores(diff.mean(), torch.tensor(se_diff)))
    value_limit = student_t_quantile(alpha / 2, draws - 1)
    value = {name: {"mean": float(v.mean()), "se": float(v.std()) / math.sqrt(draws),
                    "sd": float(v.std())} for name, v in (("analytic", analytic),
                                                          ("trace", trace))}
    value["difference"] = {"mean": float(diff.mean()), "se": se_diff, "z": z_value}
    value["sd_ratio"] = float(trace.std() / analytic.std())
    gradients = {}
    for group, diff_moments in result.grad_diffs["trace"].items():
        mean_t, mean_a = result.grads["trace"][group].mean, result.grads["analytic"][group].mean
        gradients[group] = {
            "elements": mean_a.numel(),
            "rel_error": _ratio(float((mean_t - mean_a).norm()), float(mean_a.norm())),
            "cosine": float(torch.nn.functional.cosine_similarity(mean_t, mean_a, dim=0)),
            "max_abs_z": float(z_scores(diff_moments.mean, diff_moments.se).abs().max()),
            "sd_ratio": math.sqrt(_ratio(float(result.grads["trace"][group].var.sum()),
                                         float(result.grads["analytic"][group].var.sum()))),
        }
    elements = sum(g["elements"] for g in gradients.values())
    gradient_limit = student_t_quantile(alpha / (2 * elements), draws - 1)
    value_ok = abs(z_value) <= value_limit
    gradients_ok = all(g["max_abs_z"] <= gradient_limit for g in gradients.values())
    return {"kl": kl, "batch_size": batch, "draws": draws, "particles": particles,
            "alpha": alpha,
            "dtype": "float64", "units": "nats per datum", "value": value,
            "value_limit": value_limit, "value_ok": value_ok, "gradients": gradients,
            "gradient_limit": gradient_limit, "gradients_ok": gradients_ok,
            "agree": value_ok and gradients_ok}


def kl_method(vae: VAE, x: torch.Tensor) -> str:
    """How the analytic ELBO gets D[Q(z|X) || P(z)] for this guide and prior: ``"closed
    form"``, or Monte Carlo when no closed form is registered for the pair (then the analytic
    and trace ELBOs coincide draw by draw, and the check is trivially passed)."""
    with torch.no_grad():
        q, p = vae.posterior(x), vae.prior((len(x),))
        try:
            closed_form_kl(q, p)
        except NotImplementedError:
            return (f"Monte Carlo (no closed form for {type(q).__name__} || "
                    f"{type(p).__name__}; analytic = trace on every draw)")
    return "closed form"


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    v = report["value"]
    lines = [f"check-kl: {report.get('model', 'model')}",
             f"batch of {report['batch_size']}, {report['draws']} shared draws z ~ Q(z|X), "
             f"{report['particles']} particle(s) per draw, {report['dtype']}, "
             f"alpha {report['alpha']:g}",
             f"KL term of the analytic ELBO: {report.get('kl', 'closed form')}",
             "",
             f"{'ELBO, nats per datum':<24}{'mean':>14}{'s.e.':>12}{'sd per draw':>14}"]
    for name, label in (("analytic", "analytic"), ("trace", "trace (Monte Carlo)")):
        lines.append(f"{label:<24}{v[name]['mean']:>14.4f}{v[name]['se']:>12.4f}"
                     f"{v[name]['sd']:>14.4f}")
    d = v["difference"]
    lines += [f"{'trace - analytic':<24}{d['mean']:>14.4f}{d['se']:>12.4f}"
              f"    z = {d['z']:+.2f}  (limit |z| <= {report['value_limit']:.2f})",
              f"sd per draw, trace / analytic: {v['sd_ratio']:.3f}",
              "",
              f"{'gradient of the ELBO':<22}{'elements':>10}{'rel. error':>12}{'cosine':>11}"
              f"{'max |z|':>9}{'sd trace/analytic':>19}"]
    for group, g in report["gradients"].items():
        lines.append(f"{group:<22}{g['elements']:>10}{g['rel_error']:>12.2e}"
                     f"{g['cosine']:>11.6f}{g['max_abs_z']:>9.2f}{g['sd_ratio']:>19.3f}")
    elements = sum(g["elements"] for g in report["gradients"].values())
    verdict = "AGREE" if report["agree"] else "DISAGREE"
    lines += [f"(limit max |z| <= {report['gradient_limit']:.2f}, Bonferroni over "
              f"{elements} elements; mean Monte-Carlo gradient vs mean analytic gradient)",
              f"verdict: {verdict} (value {'ok' if report['value_ok'] else 'FAILS'}, "
              f"gradients {'ok' if report['gradients_ok'] else 'FAIL'})"]
    return "\n".join(lines)


def run_check_kl(run_dir: str | Path | None = None, batch_size: int | None = None,
                 draws: int = 200, seed: int = 0, device: str = "auto",
                 alpha: float = 1e-3) -> dict:
    """:func:`check_kl` on the first ``batch_size`` test images of a run folder, with its
    particles; or, with no ``run_dir``, on a freshly initialised model (default
    :class:`~pyrovae.config.TrainConfig`) and a batch drawn from that model's own prior
    predictive P(X), so the data suit any likelihood. ``batch_size`` defaults to the
    config's. The report gains ``model``, ``seed``, ``estimator`` and ``device``."""
    from pyrovae.config import TrainConfig
    from pyrovae.data import load_dataset
    from pyrovae.runs import build_vae, load_run, prepare_data
    from pyrovae.training import resolve_device

    resolved = resolve_device(device)
    pyro.set_rng_seed(seed)
    if run_dir is None:
        config = TrainConfig()
        vae = build_vae(config, FRESH_SHAPE).to(resolved)
        size = config.batch_size if batch_size is None else batch_size
        _check_batch_size(size, None)
        with torch.no_grad():
            x = vae.likelihood(vae.decoder(vae.prior((size,)).sample()), vae.data_shape).sample()
        model = (f"freshly initialised model (default config: z_dim {config.z_dim}, hidden "
                 f"{config.hidden}, {config.likelihood}), on {size} draws of its own P(X)")
    else:
        vae, config = load_run(run_dir, str(resolved))
        data = prepare_data(config, vae, load_dataset(config.dataset, config.data_dir),
                            resolved)
        size = config.batch_size if batch_size is None else batch_size
        _check_batch_size(size, len(data.test_x))
        x = data.test_x[:size]
        model = (f"run {run_dir} ({config.dataset}, {config.likelihood}, z_dim "
                 f"{config.z_dim}, hidden {config.hidden}), first {size} test images")
    report = check_kl(vae, x, draws, config.particles, alpha)
    return {"model": model, "seed": seed, "estimator": config.elbo, "device": str(resolved),
            **report}


def _check_batch_size(size, available: int | None) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {size!r}")
    if available is not None and size > available:
        raise ValueError(f"batch_size {size} is larger than the test set ({available} images)")
