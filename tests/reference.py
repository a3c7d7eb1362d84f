"""Reference computations for the tests (not part of the library): Monte-Carlo KL, and the
gradient of an exact value in the parameter groups the estimators report."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyrovae.inference.statistics import parameter_groups


class KLEstimate(NamedTuple):
    """A Monte-Carlo KL divergence (nats) and its standard error."""

    value: torch.Tensor
    stderr: torch.Tensor
    method: str = "Monte Carlo"


def monte_carlo_kl(q, p, num_samples: int) -> KLEstimate:
    """Mean of ``log q(z) - log p(z)`` over ``num_samples`` draws z ~ q, with its s.e."""
    z = q.rsample((num_samples,)) if q.has_rsample else q.sample((num_samples,))
    terms = q.log_prob(z) - p.log_prob(z)
    return KLEstimate(terms.mean(0), terms.std(0) / math.sqrt(num_samples))


def exact_gradients(pair, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """d value / d parameters, flattened per parameter group (as ``shared_draws`` does)."""
    groups = parameter_groups(pair)
    params = [p for group in groups.values() for p in group]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    grads = iter([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])
    return {name: torch.cat([next(grads).reshape(-1) for _ in group])
            for name, group in groups.items()}


def assert_sync_free_and_capturable(pair, estimator, x: torch.Tensor) -> None:
    """Two fast steps on ``x[:8]`` under the sync guard (no host read), a finite loss, and
    the step capturable in a CUDA graph (the structural check, which runs on the CPU)."""
    from pyrovae.training.steppers import FastStepper, graph_capturable
    from pyrovae.training.sync_guard import SyncGuard

    stepper = FastStepper(pair, estimator, lr=1e-3, clip_norm=1.0)
    with SyncGuard():
        stepper.step(x[:8])
        stepper.step(x[:8])
    assert math.isfinite(stepper.take_epoch().loss_sum)
    ok, reason = graph_capturable(pair, estimator, x[:4], torch.device("cuda"))
    assert ok, reason


def straight_and_resumed(config, tmp_path, cut_at: int) -> tuple[dict, dict]:
    """Train ``config`` in one go (``tmp_path/straight``) and cut at epoch ``cut_at`` then
    resumed (``tmp_path/cut``); returns the two final checkpoints' trainer states."""
    from pyrovae.runs.checkpoints import load_checkpoint
    from pyrovae.runs.config import TrainConfig
    from pyrovae.runs.train import train_run

    train_run(config, tmp_path / "straight", progress=False)
    train_run(TrainConfig(**{**config.to_dict(), "epochs": cut_at}), tmp_path / "cut",
              progress=False)
    train_run(config, tmp_path / "cut", resume=True, progress=False)
    return tuple(load_checkpoint(tmp_path / run / "checkpoint.pt")["trainer"]
                 for run in ("straight", "cut"))
