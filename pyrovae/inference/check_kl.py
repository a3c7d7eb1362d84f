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

import contextlib
import math
from dataclasses import dataclass

import torch

from pyrovae.components.rng import forked_rng
from pyrovae.components.validation import check_int
from pyrovae.inference.estimators import build_estimator
from pyrovae.inference.kl import closed_form_kl, closed_form_sites, site_kl_differences
from pyrovae.inference.pair import Batch, ModelGuidePair, as_args, num_data, set_up_pair
from pyrovae.inference.statistics import (
    Moments,
    grouped_gradients,
    parameter_groups,
    student_t_quantile,
    z_scores,
)

MIN_DRAWS = 20  # fewer draws make the standard errors themselves too noisy

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


@dataclass
class SharedDraws:
    """Estimators scored on the same draws.

    Attributes:
        values: per estimator, its ELBO (summed over the batch, nats) on each draw, ``(N,)``.
        site_diffs: per latent site (in both traces), on each draw, ``(N,)``, its term of
            ``trace`` minus its term of ``analytic``: log P(z) - log Q(z) + D[Q || P]
            (summed over the batch, averaged over the particles; 0 in expectation).
        grads: per estimator and parameter group, :class:`Moments` of the ELBO's gradient
            (the group's parameters flattened and concatenated).
        grad_diffs: per estimator after the first, per group, :class:`Moments` of its
            gradient minus the first estimator's, draw by draw.
    """

    values: dict[str, torch.Tensor]
    grads: dict[str, dict[str, Moments]]
    grad_diffs: dict[str, dict[str, Moments]]
    site_diffs: dict[str, torch.Tensor]


def shared_draws(vae: ModelGuidePair, x: Batch, names=("analytic", "trace"),
                 draws: int = 200, particles: int = 1) -> SharedDraws:
    """Score the estimators ``names`` on ``draws`` shared draws of the guide for batch ``x``
    (a tensor, or a tuple of the model's tensor arguments).

    Each draw is one estimate with ``particles`` particles (the first estimator's traces),
    so each estimator's per-draw spread is that of the estimator as used in training.
    """
    args = as_args(x)
    estimators = {name: build_estimator(name, particles) for name in names}
    groups = parameter_groups(vae)
    values = {name: [] for name in names}
    grads = {name: {group: Moments() for group in groups} for name in names}
    diffs = {name: {group: Moments() for group in groups} for name in names[1:]}
    sites: dict[str, list[torch.Tensor]] = {}
    for _ in range(draws):
        losses = dict.fromkeys(names, 0.0)
        per_site: dict[str, torch.Tensor] = {}
        for model_trace, guide_trace in estimators[names[0]].traces(vae.model, vae.guide, *args):
            for name, estimator in estimators.items():
                losses[name] = losses[name] + estimator.particle_loss(model_trace, guide_trace)
            for site, value in site_kl_differences(model_trace, guide_trace).items():
                per_site[site] = per_site.get(site, 0.0) + value.detach() / particles
        for site, value in per_site.items():
            sites.setdefault(site, []).append(value)
        flat = {}
        for i, name in enumerate(names):
            values[name].append(-losses[name].detach())
            flat[name] = grouped_gradients(-losses[name], groups,
                                           retain_graph=i < len(names) - 1)
            for group, value in flat[name].items():
                grads[name][group].add(value)
        for name in names[1:]:
            for group in groups:
                diffs[name][group].add(flat[name][group].double() - flat[names[0]][group])
    return SharedDraws({k: torch.stack(v).double() for k, v in values.items()}, grads, diffs,
                       {k: torch.stack(v).double() for k, v in sites.items()})


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, inf (or nan for 0/0) when the denominator is 0."""
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


def check_kl(vae: ModelGuidePair, x: Batch, draws: int = 200, particles: int = 1,
             alpha: float = 1e-3) -> dict:
    """Compare ``analytic`` with ``trace`` on the batch ``x`` (see :data:`RULE`); a report.

    Any pair (:func:`~pyrovae.inference.pair.set_up_pair`), evaluated in float64 (its
    tensors swapped for float64 copies, with float64 as torch's default dtype so tensors the
    model makes match; the originals back at the end). Returns a
    JSON-ready dict: ``value`` (mean, s.e., per-draw sd of each ELBO in nats per datum; the
    paired difference and its z), ``sites`` (per latent site: how its KL is computed, and
    its own paired difference), ``gradients`` (per parameter group: elements, relative
    error and cosine of the mean gradients, max |z|, per-draw sd ratio), the limits, and
    ``agree``.
    """
    check_int(draws, "draws", minimum=MIN_DRAWS)
    if not (isinstance(alpha, float) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    args = tuple(t.double() if t.is_floating_point() else t for t in as_args(x))
    vae = set_up_pair(vae, as_args(x))  # every parameter of any pair, in its groups
    with float64(vae):
        methods = site_kl_methods(vae, args)
        result = shared_draws(vae, args, ("analytic", "trace"), draws, particles)
    batch = num_data(args)
    analytic, trace = (result.values[k] / batch for k in ("analytic", "trace"))
    diff = trace - analytic
    z_value, value_limit = _paired_z(diff), student_t_quantile(alpha / 2, draws - 1)
    value = {name: {"mean": float(v.mean()), "se": float(v.std()) / math.sqrt(draws),
                    "sd": float(v.std())} for name, v in (("analytic", analytic),
                                                          ("trace", trace))}
    value["difference"] = {"mean": float(diff.mean()), "se": float(diff.std()) /
                           math.sqrt(draws), "z": z_value}
    value["sd_ratio"] = float(trace.std() / analytic.std())
    sites = {}
    for name, method in methods.items():
        d = result.site_diffs[name] / batch
        sites[name] = {"kl": method, "mean": float(d.mean()),
                       "se": float(d.std()) / math.sqrt(draws), "z": _paired_z(d)}
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
    return {"kl": summarise_methods(methods), "batch_size": batch, "draws": draws,
            "particles": particles, "alpha": alpha,
            "dtype": "float64", "units": "nats per datum", "value": value, "sites": sites,
            "value_limit": value_limit, "value_ok": value_ok, "gradients": gradients,
            "gradient_limit": gradient_limit, "gradients_ok": gradients_ok,
            "agree": value_ok and gradients_ok}


def _paired_z(d: torch.Tensor) -> float:
    """mean(d) / (sd(d) / sqrt(N)), 0 for a difference that is 0 on every draw."""
    se = d.std() / math.sqrt(len(d))
    return float(z_scores(d.mean(), se))


@contextlib.contextmanager
def float64(pair):
    """The pair's floating parameters and buffers in float64 for the block (their ``.data``
    swapped, so Pyro's parameter store, which holds the same tensors, sees it), with float64
    as the default dtype; afterwards the very same storage as before is back (an optimiser,
    or a captured CUDA graph, keeps its addresses), with the gradients as they were."""
    tensors = [t for t in (*pair.parameters(), *pair.buffers()) if t.is_floating_point()]
    saved = [(t, t.data, t.grad if isinstance(t, torch.nn.Parameter) else None)
             for t in tensors]
    default = torch.get_default_dtype()
    for t in tensors:
        t.data = t.data.double()
        if isinstance(t, torch.nn.Parameter):
            t.grad = None
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)
        for t, data, grad in saved:
            t.data = data
            if isinstance(t, torch.nn.Parameter):
                t.grad = grad


def site_kl_methods(vae: ModelGuidePair, x: Batch) -> dict[str, str]:
    """How the analytic ELBO gets D[Q || P] at each latent site of the pair (those in both
    the guide and the model): ``"closed form"`` (torch's KL registry has the pair of
    distributions), or ``"Monte Carlo (no closed form for Q || P)"`` or ``"Monte Carlo (a
    model parent is drawn after it in the guide)"`` (then that site's analytic and trace
    terms coincide draw by draw, and the check says nothing about it).
    Read from one trace of ``vae.guide`` and ``vae.model`` on ``x``, drawn from a forked RNG
    (the caller's stream does not move)."""
    args = as_args(x)
    estimator = build_estimator("trace")
    with torch.no_grad(), forked_rng(args[0]):
        [(model_trace, guide_trace)] = estimator.traces(vae.model, vae.guide, *args)
    methods, closed = {}, closed_form_sites(model_trace, guide_trace)
    for name, site in guide_trace.nodes.items():
        prior = model_trace.nodes.get(name)
        if site["type"] != "sample" or prior is None or prior["is_observed"]:
            continue
        if name not in closed:
            methods[name] = "Monte Carlo (a model parent is drawn after it in the guide)"
            continue
        try:
            closed_form_kl(site["fn"], prior["fn"])
            methods[name] = "closed form"
        except NotImplementedError:
            methods[name] = (f"Monte Carlo (no closed form for {type(site['fn']).__name__} "
                             f"|| {type(prior['fn']).__name__})")
    return methods


def summarise_methods(methods: dict[str, str]) -> str:
    """One line for every site: ``"closed form"``, or the Monte-Carlo sites and why."""
    monte_carlo = {n: m for n, m in methods.items() if m != "closed form"}
    if not monte_carlo:
        return "closed form"
    reasons = "; ".join(f"{n}: {m[len('Monte Carlo ('):-1]}" for n, m in monte_carlo.items())
    return f"Monte Carlo ({reasons}; analytic = trace on every draw there)"


def kl_method(vae: ModelGuidePair, x: Batch) -> str:
    """:func:`summarise_methods` of :func:`site_kl_methods`: ``"closed form"`` when every
    latent site has one, else ``"Monte Carlo (...)"`` naming the sites that do not."""
    return summarise_methods(site_kl_methods(vae, x))


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
              ""]
    if report.get("sites"):
        lines.append(f"{'latent site':<16}{'KL term':<40}{'trace - analytic':>18}{'s.e.':>10}"
                     f"{'z':>8}")
        for name, site in report["sites"].items():
            lines.append(f"{name:<16}{site['kl'].split(' (')[0]:<40}{site['mean']:>18.4f}"
                         f"{site['se']:>10.4f}{site['z']:>+8.2f}")
        lines.append("")
    lines += [
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
