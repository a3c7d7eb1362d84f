"""Steppers: one SVI step on one batch, three ways, for the same model/guide and estimator.

- :class:`FastStepper` (``stepper="fast"``, the default): the estimator's sync-free
  ``differentiable_loss``, ``backward()`` and ``torch.optim.Adam`` over ``vae.parameters()``
  (``capturable=True`` on CUDA, ``fused=True`` on the CPU). The loss is summed on the device
  and read once per epoch, so the step never synchronises host and device (a test proves it
  under :class:`~pyrovae.training.sync_guard.SyncGuard`, optimiser step included; the one exception
  is ``on_nan="skip"`` on the CPU, which reads each step's verdict on the host, see below).
  Pyro's and torch's argument validation read values on the host, so the step runs with
  validation off; the data is checked against the likelihood's support once, before training.
- The same stepper in **CUDA-graph mode** (``use_graph=True``, chosen by ``compile="graph"``
  or ``"auto"`` on CUDA): after ``warmup`` eager steps on a side stream, the whole step (Pyro's
  traces of guide and model, the loss, backward, clipping, Adam, the loss sum) is captured once
  into a ``torch.cuda.CUDAGraph`` and replayed for every later batch, copied into a static
  buffer. Random draws come from the CUDA generator, which graphs advance on every replay.
- The same stepper in **trace mode** (``compile="trace"``, on the CPU): the loss and its
  gradients recorded once as a tensor program and replayed for every later batch
  (:mod:`pyrovae.training.traced`); then Adam, clipping and the NaN guard as eagerly.
  ``compile="inductor"`` compiles the recorded program with ``torch.compile``'s inductor
  (fused C++ loops; seconds to compile; within float32 rounding of the eager step).
- :class:`SVIStepper` (``stepper="svi"``): the reference, ``pyro.infer.SVI`` with
  ``pyro.optim.Adam``. ``SVI.step`` returns the loss as a Python float: one sync per step.

Gradient clipping (``clip_norm``) clips each parameter's gradient to that L2 norm, as
``pyro.optim``'s ``clip_args={"clip_norm": ...}`` does, in every stepper.

NaN guard: every step computes, on the device, whether its loss and gradients are finite, and
counts the steps that were not (and the first such step); :meth:`FastStepper.take_epoch` reads
these counters with the epoch's loss in one transfer. With ``on_nan="skip"`` a non-finite
step leaves parameters and Adam state as they were, so training carries on from the last
good values. On the CPU (``FastStepper.skip_on_host``) the optimiser step is simply not taken:
the verdict is read on the host, which costs nothing there, while copying the state in order
to undo a step is a large share of a small step (docs/BENCHMARKS.md has the measurement). On
other devices the update is undone on the device (state restored with ``torch.where``), which needs
no host sync and works inside a CUDA graph. The ``svi`` stepper
checks the loss Pyro returns after every step and cannot skip (Pyro has already stepped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from pyrovae.components.rng import forked_rng
from pyrovae.inference.elbo import guess_plate_nesting
from pyrovae.inference.estimators import Estimator
from pyrovae.inference.pair import ModelGuidePair, as_args
from pyrovae.training.distributed import SINGLE, Distributed, all_reduce, ddp_loss
from pyrovae.training.traced import TracedStep

STEPPERS = ("fast", "svi")
COMPILE_MODES = ("auto", "none", "graph", "trace", "inductor")
NAN_ACTIONS = ("stop", "skip")


@dataclass
class EpochStats:
    """What a stepper accumulated since the last read: sums over steps, in nats."""

    loss_sum: float        # negative ELBO summed over the good steps' batches
    steps: int             # steps taken
    bad_steps: int         # steps whose loss or gradient was NaN or infinite
    first_bad_step: int    # index (0-based, within the epoch) of the first bad step; -1: none


def check_stepper_options(stepper: str, on_nan: str) -> None:
    """``ValueError`` for a stepper and NaN action that do not go together."""
    if stepper == "svi" and on_nan != "stop":
        raise ValueError(f"on_nan={on_nan!r} needs stepper 'fast': pyro.infer.SVI has "
                         "already updated the parameters when it returns the loss")


def clip_per_parameter(params: list[torch.Tensor], clip_norm: float) -> None:
    """Scale each gradient to L2 norm <= ``clip_norm`` (on the device, no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(clip_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)


def all_finite(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """0-dim bool tensor: the loss and every gradient are finite (computed on the device)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = loss.detach().float()
    if grads:
        total = total + torch.stack(torch._foreach_norm(grads)).sum()
    return torch.isfinite(total)


def graph_capturable(vae: ModelGuidePair, estimator: Estimator, x, device: torch.device
                     ) -> tuple[bool, str]:
    """Whether the step on batches like ``x`` (a tensor or a tuple of the model's tensor
    arguments) can be captured in a CUDA graph, and why not.

    Needs CUDA, an estimator with a sync-free loss, and a guide whose sample sites are all
    reparameterised (score-function terms are fine eagerly, but kept out of graphs).
    """
    if device.type != "cuda":
        return False, f"device is {device.type}, CUDA graphs need CUDA"
    if not getattr(estimator, "capturable", True):
        return False, f"estimator {type(estimator).__name__} has no sync-free loss"
    with torch.no_grad(), poutine.block(), forked_rng(device):
        guide = estimator.wrap(vae.model, vae.guide)[1]  # as trained (--score-function)
        guide_trace = poutine.trace(guide).get_trace(*as_args(x))  # leaves the RNG streams as found
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site) \
                and not site["fn"].has_rsample:
            return False, f"guide site {name!r} is not reparameterised (score-function term)"
    return True, "CUDA, sync-free estimator, reparameterised guide"


class FastStepper:
    """One SVI step as ``loss.backward(); adam.step()``, the loss summed on the device.

    Args:
        vae: the model/guide pair, on its device.
        estimator: supplies ``differentiable_loss(model, guide, x)``.
        lr: Adam learning rate.
        clip_norm: per-parameter gradient norm clip, or ``None``.
        on_nan: ``"stop"`` (count non-finite steps; the trainer stops) or ``"skip"`` (also
            leave parameters and Adam state as they were before such a step).
        warmup: eager steps before a CUDA graph is captured (graph mode only).
        betas, eps: Adam's moment decay rates and denominator constant.
        distributed: this process's rank; with several, the loss goes through
            ``DistributedDataParallel`` and is scaled by the number of ranks (see
            :mod:`pyrovae.training.distributed`), and :meth:`take_epoch` sums the loss over ranks.

    On CUDA the learning rate is a device tensor, so :meth:`set_lr` changes it in place and
    a captured graph replays with the new value.
    """

    def __init__(self, vae: ModelGuidePair, estimator: Estimator, lr: float,
                 clip_norm: float | None,
                 on_nan: str = "stop", warmup: int = 3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 distributed: Distributed = SINGLE):
        self.vae, self.estimator, self.clip_norm = vae, estimator, clip_norm
        self.distributed = distributed
        self.on_nan = on_nan
        self.params = list(vae.parameters())
        self.device = self.params[0].device
        # on_nan="skip": skip a bad step by not taking it (reads the verdict on the host), or
        # by undoing it on the device (no sync; the only way inside a CUDA graph)
        self.skip_on_host = self.device.type == "cpu"
        # CUDA: capturable Adam (its step counter stays on the device: graph-safe, no sync);
        # CPU: fused Adam, one kernel for all parameters (faster than the default per-tensor
        # loop, and it reads no value on the host either)
        cuda = self.device.type == "cuda"
        lr_value = torch.tensor(float(lr), device=self.device) if cuda else lr
        self.optimizer = torch.optim.Adam(self.params, lr=lr_value, betas=betas, eps=eps,
                                          capturable=cuda, fused=not cuda)
        self.loss_sum = torch.zeros((), device=self.device)
        # steps, bad steps, first bad step (-1: none), on the device
        self.counters = torch.tensor([0, 0, -1], device=self.device)
        self.use_graph = False
        self.traced: TracedStep | None = None  # trace mode: see use_trace
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_args: tuple[torch.Tensor, ...] = ()
        self._eager_steps = 0
        if distributed.enabled:
            self._loss = ddp_loss(vae, estimator, self.device)
        else:
            self._loss = lambda *args: estimator.differentiable_loss(vae.model, vae.guide, *args)

    def use_trace(self, gemm: str = "default", backend: str = "replay") -> None:
        """Trace mode: the loss and gradients recorded once and replayed
        (:class:`~pyrovae.training.traced.TracedStep`; ``gemm`` picks the matrix products'
        library, ``backend`` runs the recording as it is or compiled by inductor). One
        process, not inside a CUDA graph."""
        if self.distributed.enabled or self.use_graph:
            raise ValueError("the traced step runs in one process, outside CUDA graphs")
        modules = list(self.vae.modules()) if hasattr(self.vae, "modules") else []
        self.traced = TracedStep(self._loss, self.params, gemm, backend,
                                 state=lambda: tuple(m.training for m in modules))

    def _eager_step(self, args: tuple[torch.Tensor, ...]) -> None:
        with pyro.validation_enabled(False):  # validation reads values on the host
            if self.traced is not None:  # sets the gradients itself
                loss = self.traced(*args)
            else:
                loss = self._loss(*args)
                # DDP averages gradients over the W ranks: W * loss makes the sum (module
                # docstring)
                (loss * self.distributed.world_size if self.distributed.enabled
                 else loss).backward()
        if self.clip_norm is not None:
            clip_per_parameter(self.params, self.clip_norm)
        finite = all_finite(loss, self.params)
        if self.distributed.enabled:  # one verdict for all ranks, or their updates diverge
            finite = all_reduce(finite.float(), self.distributed, "min").bool()
        if self.on_nan == "skip" and self.skip_on_host:
            if finite:  # reading the verdict costs nothing on the CPU
                self.optimizer.step()
        elif self.on_nan == "skip":  # undo on the device: no host sync
            before = [t.detach().clone() for t in self._state_tensors()]
            self.optimizer.step()
            self._undo_unless(finite, before)
        else:
            self.optimizer.step()
        self.loss_sum += torch.where(finite, loss.detach(), 0.0)
        steps, bad, first = self.counters.unbind()
        self.counters.copy_(torch.stack([
            steps + 1, bad + (~finite).long(), torch.where(~finite & (first < 0), steps, first)]))

    def _state_tensors(self) -> list[torch.Tensor]:
        """Parameters, then Adam's state tensors (empty before the first step)."""
        state = [t for p in self.params for t in self.optimizer.state.get(p, {}).values()
                 if isinstance(t, torch.Tensor)]
        return [p.data for p in self.params] + state

    def _undo_unless(self, finite: torch.Tensor, before: list[torch.Tensor]) -> None:
        """Restore parameters and Adam state as they were before the step, if not finite."""
        after = self._state_tensors()
        # the first step creates Adam's state: undoing it means zeros (Adam's initial state)
        before = before + [torch.zeros_like(t) for t in after[len(before):]]
        for tensor, old in zip(after, before):
            tensor.copy_(torch.where(finite, tensor, old))

    def step(self, x) -> None:
        """Take one optimiser step on batch ``x`` (a tensor, or a tuple of the model's tensor
        arguments); adds its loss to ``self.loss_sum``."""
        args = as_args(x)
        if not self.use_graph:
            self.optimizer.zero_grad(set_to_none=True)  # no zero fill, no accumulate
            self._eager_step(args)
        elif self.graph is not None:
            for static, arg in zip(self.static_args, args):
                static.copy_(arg)
            self.graph.replay()
        elif self._eager_steps < self.warmup:
            self._side_stream_step(args)
        else:
            self._capture(args)

    def _side_stream_step(self, x: tuple[torch.Tensor, ...]) -> None:
        """A warm-up step on a side stream, as capture requires (PyTorch's CUDA-graph recipe)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            self._eager_step(x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._eager_steps += 1

    def _capture(self, args: tuple[torch.Tensor, ...]) -> None:
        """Record the whole step on static copies of ``args``, then replay it for them."""
        self.static_args = tuple(arg.clone() for arg in args)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates grads in the graph pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._eager_step(self.static_args)
        self.graph = graph
        graph.replay()  # capture records kernels without running them

    def take_epoch(self) -> EpochStats:
        """Read (one transfer) and reset the loss sum and the step counters; with several
        ranks, the loss summed over them and the bad-step counts of the worst rank."""
        totals = torch.cat([self.loss_sum.double().reshape(1), self.counters.double()])
        all_reduce(totals[:1], self.distributed, "sum")
        all_reduce(totals[2:], self.distributed, "max")
        loss, steps, bad, first = totals.tolist()
        self.loss_sum.zero_()
        self.counters.copy_(torch.tensor([0, 0, -1]))
        return EpochStats(loss, int(steps), int(bad), int(first))

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (in place on CUDA: a captured graph sees it)."""
        for group in self.optimizer.param_groups:
            _put_lr(group, lr)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.graph is not None:
            raise RuntimeError("load the optimiser state before the first step: a captured "
                               "CUDA graph holds the old state tensors")
        # torch keeps the saved groups whole: a CUDA checkpoint would make a CPU optimiser
        # capturable (and a CPU one a CUDA optimiser fused). Keep this device's settings and
        # lr tensor, taking only the learning rate's value from the checkpoint.
        own = [{k: v for k, v in g.items() if k != "params"}
               for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, settings in zip(self.optimizer.param_groups, own):
            saved_lr = float(group["lr"])
            group.update(settings)
            _put_lr(group, saved_lr)


def _put_lr(group: dict, lr: float) -> None:
    """Set a param group's learning rate: in place when it is a (device) tensor."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


class SVIStepper:
    """The reference: ``pyro.infer.SVI(model, guide, pyro.optim.Adam, estimator)``."""

    use_graph = False

    def __init__(self, vae: ModelGuidePair, estimator: Estimator, lr: float,
                 clip_norm: float | None,
                 on_nan: str = "stop", betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        check_stepper_options("svi", on_nan)
        clip_args = {"clip_norm": clip_norm} if clip_norm is not None else None
        self.optim_args = {"lr": lr, "betas": betas, "eps": eps}
        self.optimizer = pyro.optim.Adam(self.optim_args, clip_args=clip_args)
        self.vae, self.estimator = vae, estimator
        self.elbo = estimator.pyro_elbo()
        self.svi = pyro.infer.SVI(vae.model, vae.guide, self.optimizer, self.elbo)
        self.stats = EpochStats(0.0, 0, 0, -1)

    def step(self, x) -> None:
        args = as_args(x)
        inner = getattr(self.elbo, "elbo", self.elbo)  # inside a HandledELBO
        if inner.vectorize_particles and inner.max_plate_nesting == math.inf:
            # Pyro would guess on this step from the training stream; a resumed run would
            # draw that again: guess on a forked RNG (as the fast stepper's estimator does)
            guess_plate_nesting(inner, *self.estimator.wrap(self.vae.model, self.vae.guide),
                                args, {})
        loss = self.svi.step(*args)  # a Python float: Pyro syncs here, every step
        if math.isfinite(loss):
            self.stats.loss_sum += loss
        else:
            self.stats.bad_steps += 1
            if self.stats.first_bad_step < 0:
                self.stats.first_bad_step = self.stats.steps
        self.stats.steps += 1

    def take_epoch(self) -> EpochStats:
        stats, self.stats = self.stats, EpochStats(0.0, 0, 0, -1)
        return stats

    def set_lr(self, lr: float) -> None:
        """Change the learning rate of every per-parameter optimiser, and of later ones."""
        self.optim_args["lr"] = lr  # pyro.optim reads this dict for parameters it meets later
        for optimizer in self.optimizer.optim_objs.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        # states loaded from a checkpoint but not yet given to an optimiser (pyro.optim makes
        # them at a parameter's first step) would bring back the saved rate
        for saved in self.optimizer._state_waiting_to_be_consumed.values():
            for group in saved.get("param_groups", []):
                group["lr"] = lr

    def state_dict(self) -> dict:
        return self.optimizer.get_state()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.set_state(state)
