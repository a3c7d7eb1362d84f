"""Evaluation: the ELBO of held-out data, and log P(X) estimated honestly, with error bars.

Two estimators of log P(X) = log integral P(X|z) P(z) dz, per datum, from traces of the
model (and guide) with k particles on the left (a vectorised plate that is never
subsampled), in chunks of ``chunk`` particles combined by a running logsumexp, so memory is
bounded by ``chunk x batch`` decoder outputs whatever k is:

- ``proposal="prior"`` (naive, Doersch's Problem 2):   log (1/n sum_i P(X|z_i)), z_i ~ P(z);
- ``proposal="guide"`` (importance sampling from Q, the IWAE-k bound):
      log (1/k sum_i P(X|z_i) P(z_i) / Q(z_i|X)),  z_i ~ Q(z|X).

Both average unbiased estimates of P(X), so both are below log P(X) in expectation (Jensen)
and reach it as k grows; the naive one needs astronomically many draws once z has more than
a few dimensions, because almost no z from P(z) explains a given X.

Log-densities are read unscaled (:func:`pyrovae.inference.importance.site_log_prob` with
``scaled=False``): Pyro stores log-probs multiplied by plate subsample factors and
``poutine.scale`` (and a KL weight), none of which belongs in a per-datum log-likelihood.

Standard errors (:class:`LogLikelihood`):

- ``se``: across data points, sd(per-datum estimates) / sqrt(N): the uncertainty of the
  data-set mean as an estimate of the population mean (it includes the Monte-Carlo noise);
- ``mc_se``: the Monte-Carlo part alone, test set held fixed: per datum, the delta-method
  s.e. of log mean(w), sqrt((n sum w^2 / (sum w)^2 - 1) / (n - 1)), combined over data as
  sqrt(sum_i mc_se_i^2) / N. It is itself estimated from the draws and understates the
  error when the weights are heavy-tailed (the naive estimator at small n).

Everything runs under ``torch.no_grad()``; the model's parameters are not changed. Units:
nats per datum; bits per dimension = nats / (D ln 2), D = values per datum (pixels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites

from pyrovae.components.validation import check_int, check_one_of
from pyrovae.inference.elbo import Estimator, guess_plate_nesting
from pyrovae.inference.estimators import build_estimator
from pyrovae.inference.importance import log_weights
from pyrovae.inference.pair import Batch, ModelGuidePair, as_args, num_data, take
from pyrovae.inference.statistics import standard_error

PROPOSALS = ("guide", "prior")
PARTICLE_PLATE = "log_likelihood_particles"
MAX_ROWS = 2 ** 14  # (datum, particle) pairs per pass: bounds the memory of one chunk


@torch.no_grad()
def evaluate_elbo(vae: ModelGuidePair, x: Batch, batch_size: int = 1000,
                  estimator: Estimator | str = "trace") -> float:
    """Mean bound of the data ``x`` (shape ``(N, *data_shape)``, or a tuple of the model's
    tensor arguments with the data along dim 0), nats per datum.

    The estimator's unweighted bound (any KL weight beta is dropped: beta = 1): the ELBO for
    a name (one particle), the estimator's own K-particle bound for an instance. Each datum
    is one Monte-Carlo estimate, so the mean carries Monte-Carlo noise on top of the data's
    own spread. Every datum is used, the last partial batch included.
    """
    if isinstance(estimator, str):
        estimator = build_estimator(estimator)
    estimator = estimator.without_kl_weight()
    n = num_data(x)
    if n == 0:
        raise ValueError("cannot evaluate the ELBO of an empty data set")
    total = torch.zeros((), dtype=torch.float64, device=as_args(x)[0].device)
    for start in range(0, n, batch_size):
        batch = take(x, slice(start, start + batch_size))
        total -= estimator.differentiable_loss(vae.model, vae.guide, *batch).detach()
    return float(total) / n


@dataclass
class LogLikelihood:
    """Per-datum estimates of log P(X) from ``samples`` draws of ``proposal``.

    Attributes:
        samples: k (or n), draws per datum.
        proposal: ``"guide"`` (importance sampling, IWAE-k) or ``"prior"`` (naive).
        per_datum: ``(N,)`` float64, estimates of log P(x_i), nats.
        per_datum_mc_se: ``(N,)`` delta-method Monte-Carlo s.e. of each (nan for k = 1).
        dims: D, values per datum, for bits per dimension.
        per_datum_ess: ``(N,)`` effective sample size (sum w)^2 / sum w^2, in [1, k]: near 1
            when one draw dominates the mean, and then the estimate has not converged (its
            delta-method s.e. saturates near 1 nat, whatever its real error).
    """

    samples: int
    proposal: str
    per_datum: torch.Tensor
    per_datum_mc_se: torch.Tensor
    dims: int
    per_datum_ess: torch.Tensor

    @property
    def mean(self) -> float:
        """Mean estimate of log P(X) over the data, nats per datum."""
        return float(self.per_datum.mean())

    @property
    def se(self) -> float:
        """S.e. of :attr:`mean` across data points: sd / sqrt(N) (nan for N = 1)."""
        return standard_error(self.per_datum)

    @property
    def ess(self) -> float:
        """Mean effective sample size over the data."""
        return float(self.per_datum_ess.mean())

    @property
    def mc_se(self) -> float:
        """Monte-Carlo s.e. of :attr:`mean`, the data held fixed: sqrt(sum mc_se_i^2) / N."""
        return float(self.per_datum_mc_se.square().sum().sqrt()) / len(self.per_datum)

    def summary(self, prefix: str = "test_nll") -> dict:
        """JSON-ready: the negative log-likelihood (lower is better) in nats per datum and
        bits per dimension, with both standard errors."""
        to_bits = 1.0 / (self.dims * math.log(2))
        return {prefix: -self.mean, f"{prefix}_se": self.se, f"{prefix}_mc_se": self.mc_se,
                f"{prefix}_bits_per_dim": -self.mean * to_bits,
                f"{prefix}_bits_per_dim_se": self.se * to_bits,
                f"{prefix}_samples": self.samples, f"{prefix}_ess": self.ess,
                f"{prefix}_proposal": self.proposal,
                "n_data": len(self.per_datum)}


class _Running:
    """Per-datum running logsumexp of log w and of 2 log w, and the count n."""

    def __init__(self):
        self.lse = self.lse2 = None
        self.n = 0

    def add(self, log_w: torch.Tensor) -> None:
        """``log_w``: ``(c, B)``, c more draws for each of B data."""
        chunk = (torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0))
        if self.lse is None:
            self.lse, self.lse2 = chunk
        else:
            self.lse, self.lse2 = torch.logaddexp(self.lse, chunk[0]), \
                torch.logaddexp(self.lse2, chunk[1])
        self.n += log_w.shape[0]

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log mean(w), its delta-method s.e. and the effective sample size, each ``(B,)``."""
        n = self.n
        value = self.lse - math.log(n)
        ess = (2 * self.lse - self.lse2).exp()  # (sum w)^2 / sum w^2
        if n == 1:
            return value, torch.full_like(value, math.nan), ess
        ratio = n / ess - 1.0  # n sum w^2 / (sum w)^2 - 1 = var(w) / mean(w)^2, biased
        return value, (ratio.clamp_min(0.0) / (n - 1)).sqrt(), ess


def _per_datum_log_weights(vae: ModelGuidePair, args: tuple[torch.Tensor, ...], draws: int,
                           proposal: str, nesting: int) -> torch.Tensor:
    """``(draws, B)`` float64 unscaled log-weights of ``draws`` fresh particles per datum.

    The particles are a plate of size ``draws`` left of the model's ``nesting`` plates.
    """
    plate = pyro.plate(PARTICLE_PLATE, draws, dim=-(nesting + 1))
    if proposal == "guide":
        guide_trace = prune_subsample_sites(poutine.trace(plate(vae.guide)).get_trace(*args))
        model = poutine.replay(plate(vae.model), trace=guide_trace)
    else:  # naive: every latent drawn from its prior, and only log P(X|z) kept
        guide_trace, model = Trace(), plate(vae.model)
    model_trace = prune_subsample_sites(poutine.trace(model).get_trace(*args))
    if proposal == "prior":
        for name in [n for n, s in model_trace.nodes.items()
                     if s["type"] == "sample" and not s["is_observed"]]:
            model_trace.remove_node(name)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    batch = num_data(args)
    log_w = log_weights(model_trace, guide_trace, scaled=False)
    if log_w.numel() != draws * batch:
        raise ValueError(_outside_the_data_plate(model_trace, guide_trace, draws, batch))
    return log_w.reshape(draws, batch).double()


def _outside_the_data_plate(model_trace, guide_trace, draws: int, batch: int) -> str:
    """The message for sites whose log-density is not one value per (draw, datum)."""
    outside = []
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name in outside:
                continue
            sizes = {f.size for f in site["cond_indep_stack"]
                     if f.vectorized and f.name != PARTICLE_PLATE}
            if batch not in sizes:
                outside.append(name)
    sites = ", ".join(repr(n) for n in outside) or "(none found by plate size)"
    return (f"per-datum log-likelihoods need every sample site inside the data plate (one "
            f"log-density per datum); outside it: {sites}, with {batch} data and {draws} "
            "draws per datum")


@torch.no_grad()
def log_likelihood(vae: ModelGuidePair, x: Batch, samples: int | Sequence[int] = 5000,
                   proposal: str = "guide", chunk: int = 500,
                   batch_size: int | None = None, progress=None
                   ) -> LogLikelihood | list[LogLikelihood]:
    """Estimate log P(x_i) for each datum of ``x`` (``(N, *data_shape)``, or a tuple of the
    model's tensor arguments with the data first); see the module.

    Args:
        samples: k, draws per datum; or an increasing list of k, answered from one run (the
            estimate at k uses the first k draws), e.g. ``[1, 10, 100, 5000]``.
        proposal: ``"guide"`` (importance sampling from Q) or ``"prior"`` (naive).
        chunk: particles per pass (memory: ``chunk x batch`` decoder outputs).
        batch_size: data per pass; default ``max(1, 16384 // chunk)``, so a pass scores
            about 16k (datum, draw) pairs and memory stays bounded.
        progress: called after each batch as ``progress(n, nll_sum)``: its number of data
            and the sum of their estimated -log P(x) at the largest k (nats; one host read
            per batch).

    Returns:
        a :class:`LogLikelihood` (a list of them, one per k, for a list).
    """
    counts = [samples] if isinstance(samples, int) else list(samples)
    _check_counts(counts, proposal, chunk, batch_size, x)
    batch_size = batch_size or max(1, MAX_ROWS // chunk)
    nesting = _plate_nesting(vae, take(x, slice(0, 1)))
    parts = [([], [], []) for _ in counts]  # per k: estimates, s.e., ESS, batch by batch
    for start in range(0, num_data(x), batch_size):
        batch, running = take(x, slice(start, start + batch_size)), _Running()
        for i, k in enumerate(counts):
            while running.n < k:
                draws = min(chunk, k - running.n)
                running.add(_per_datum_log_weights(vae, batch, draws, proposal, nesting))
            for part, tensor in zip(parts[i], running.estimate()):
                part.append(tensor)
        if progress is not None:
            progress(num_data(batch), -float(parts[-1][0][-1].double().sum()))
    dims = math.prod(as_args(x)[0].shape[1:])
    results = [LogLikelihood(k, proposal, *(torch.cat(p).cpu() for p in part[:2]), dims,
                             torch.cat(part[2]).cpu()) for k, part in zip(counts, parts)]
    return results[0] if isinstance(samples, int) else results


def _plate_nesting(vae: ModelGuidePair, args: tuple[torch.Tensor, ...]) -> int:
    """How many plates deep the model and guide go (Pyro's guess, from one run)."""
    elbo = pyro.infer.Trace_ELBO(vectorize_particles=True)
    return guess_plate_nesting(elbo, vae.model, vae.guide, args, {})


def _check_counts(counts, proposal, chunk, batch_size, x) -> None:
    if not counts or any(not isinstance(k, int) or isinstance(k, bool) or k < 1
                         for k in counts) or counts != sorted(set(counts)):
        raise ValueError(f"samples must be an integer >= 1 or an increasing list of them, "
                         f"got {counts!r}")
    check_one_of(proposal, "proposal", PROPOSALS)
    for name, value in (("chunk", chunk), ("batch_size", batch_size)):
        if value is not None:
            check_int(value, name)
    if num_data(x) == 0:
        raise ValueError("cannot estimate the log-likelihood of an empty data set")


def nll_report(vae: ModelGuidePair, x: Batch, samples: int, chunk: int = 500,
               combine=None, progress=None) -> tuple[dict, LogLikelihood]:
    """The test NLL by importance sampling (IWAE-k) of the data ``x``, for evaluation.json:
    :meth:`LogLikelihood.summary` plus ``test_nll_chunk`` and ``test_nll_seconds`` (wall
    time of the whole estimate, on ``x``'s device), and the estimate itself (for paired
    comparisons). ``combine`` maps this process's :class:`LogLikelihood` to the one reported
    (e.g. joined over ranks, or with ``dims`` set to the values actually scored); ``progress``
    is :func:`log_likelihood`'s."""
    start = time.perf_counter()
    result = log_likelihood(vae, x, samples, "guide", chunk, progress=progress)
    if combine is not None:
        result = combine(result)
    seconds = time.perf_counter() - start
    return {**result.summary("test_nll"), "test_nll_chunk": chunk,
            "test_nll_seconds": seconds, "test_nll_device": str(as_args(x)[0].device)}, result
