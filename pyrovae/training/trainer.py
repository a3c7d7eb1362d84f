"""The SVI loop: epochs, progress, metrics, device choice, trainer state for checkpoints.

The step itself is a stepper's job (:mod:`pyrovae.training.steppers`): ``fast`` (sync-free,
optionally a CUDA graph) or ``svi`` (the reference, ``pyro.infer.SVI``). The loss is read once
per epoch. Side effects (checkpoints, metrics files, progress, signals) are callbacks
(:mod:`pyrovae.training.callbacks`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import pyro
import torch

from pyrovae.components.data import DeviceBatches
from pyrovae.components.rng import forked_rng, rng_state, set_rng_state
from pyrovae.components.validation import check_int, check_one_of
from pyrovae.inference.estimators import Estimator, build_estimator
from pyrovae.inference.evaluation import evaluate_elbo
from pyrovae.inference.pair import STORE_PREFIX, Batch, as_args, as_pair, num_data, take
from pyrovae.training.averaging import WeightAverage, check_decay
from pyrovae.training.callbacks import Callback, ProgressBar
from pyrovae.training.checks import (
    NonFiniteLossError,
    check_adam,
    check_fit_data,
    check_kl_weight,
    check_lr,
    resolve_device,
)
from pyrovae.training.distributed import SINGLE, Distributed, all_reduce, rank_seed, reduce_mean
from pyrovae.training.step_mode import choose_step_mode
from pyrovae.training.steppers import (
    COMPILE_MODES,
    NAN_ACTIONS,
    STEPPERS,
    FastStepper,
    SVIStepper,
    check_stepper_options,
)
from pyrovae.training.traced import GEMM_CHOICES

logger = logging.getLogger(__name__)
__all__ = ["COMPILE_MODES", "NAN_ACTIONS", "STEPPERS", "FastStepper", "NonFiniteLossError",
           "SVIStepper", "Trainer", "check_kl_weight", "check_lr", "resolve_device"]


class Trainer:
    r"""Trains a model/guide pair by SVI, epoch by epoch.

    The pair is any two Pyro programs over the same data (see
    :mod:`pyrovae.inference.pair`): pyrovae's :class:`~pyrovae.models.vae.VAE`, an object
    with ``model`` and ``guide`` methods (Pyro's ``examples/vae`` VAE as written), or
    ``Trainer(model=my_model, guide=my_guide)``. Parameters may live in ``nn.Module``\ s,
    ``pyro.module`` registrations or ``pyro.param`` statements, also ones created on the
    first call: the first batch (or :meth:`prepare`) runs the guide and model once to find
    them before the optimiser is built.

    Args:
        pair: the model/guide pair, already on its device (or ``model=`` and ``guide=``).
        estimator: an :class:`~pyrovae.inference.estimators.Estimator` or a registered name.
        lr: Adam learning rate (> 0).
        clip_norm: per-parameter gradient norm clip, or ``None``.
        stepper: ``"fast"`` or ``"svi"`` (see :mod:`pyrovae.training.steppers`).
        particles: Monte-Carlo particles per step when ``estimator`` is a name.
        compile: ``"auto"`` (a CUDA graph of the fast step when on CUDA and the estimator
            and guide allow it; on the CPU, trace mode for a ``fit`` of at least
            :data:`~pyrovae.training.step_mode.AUTO_TRACE_STEPS` steps; eager otherwise; the
            log says which and why, :mod:`pyrovae.training.step_mode`),
            ``"graph"``
            (insist: a ``ValueError`` says why when it cannot be), ``"trace"`` (on the CPU:
            the step recorded once as a tensor program and replayed,
            :mod:`pyrovae.training.traced`), ``"inductor"`` (that program compiled by
            ``torch.compile``'s inductor) or ``"none"`` (eager).
        on_nan: ``"stop"`` (raise :class:`NonFiniteLossError` at the end of an epoch with a
            non-finite loss or gradient) or ``"skip"`` (leave parameters and Adam state as they
            were before such a step and carry on; ``fast`` stepper only). Checked on the
            device; on the CPU the skip reads each step's verdict, elsewhere the counts are
            read once per epoch.
        beta: the KL weight B > 0 of the beta-VAE objective E_Q[log P(X|z)] - B D[Q || P(z)],
            applied by the estimator's :class:`~pyrovae.inference.handlers.KLWeightMessenger` (every
            latent site's log-density times beta, in model and guide), so every estimator
            gets it.
        kl_warmup: N >= 0 epochs of linear KL warm-up: epoch e (1, 2, ...) trains with
            beta_e = B min(1, (e - 1) / N), from 0 in the first epoch to B from epoch N + 1.
        adam_betas, adam_eps: Adam's moment decay rates (each in [0, 1)) and denominator
            constant (> 0); Burda et al. (2015) train with eps 1e-4.
        distributed: this process's rank (:mod:`pyrovae.training.distributed`); with several ranks
            (``fast`` stepper only), ``fit`` and ``evaluate`` take this rank's shard of the
            data and report metrics over all ranks, and each epoch reseeds the RNG from
            (seed, epoch, rank).
        model, guide: the two programs, instead of ``pair``.
        gemm: for a traced step: the matrix products' library, ``"default"`` (torch's),
            ``"onednn"``, or ``"measure"`` (time both on the step's own products and take
            oneDNN if it wins by 5 %; the log gives the milliseconds; a close call can go
            either way, so two runs may then differ by float32 rounding)
            (:mod:`pyrovae.training.gemm`).
        ema_decay: keep a Polyak (exponential moving) average of the weights with this
            decay in (0, 1), updated after every step (:mod:`pyrovae.training.averaging`);
            ``with trainer.averaged():`` evaluates with it. ``None``: no average.

    Data: ``fit`` and ``evaluate`` take a tensor ``(N, ...)`` (``model(x)``) or a tuple of
    tensors with the data along dim 0 (``model(x, y, ...)``, e.g. a condition).

    :meth:`set_lr` changes the learning rate between epochs (schedules), also inside a
    captured CUDA graph.

    With beta != 1 or a warm-up, ``train_elbo`` in the metrics is the training objective
    (the beta-weighted bound), ``beta`` records beta_e, and ``test_elbo`` is always the
    unweighted bound (beta = 1).

    The process-global Pyro parameter store is cleared on construction: a process trains
    one model at a time (stale entries of an earlier model would shadow this one's in SVI).
    ``self.pair`` is the :class:`~pyrovae.inference.pair.PyroPair`, ``self.vae`` the object
    given (the pair itself for ``model=``/``guide=``).
    """

    def __init__(self, pair=None, estimator: Estimator | str = "trace", lr: float = 1e-3,
                 clip_norm: float | None = None, stepper: str = "fast", particles: int = 1,
                 compile: str = "auto", on_nan: str = "stop", beta: float = 1.0,
                 kl_warmup: int = 0, adam_betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, distributed: Distributed = SINGLE, *,
                 model=None, guide=None, gemm: str = "default",
                 ema_decay: float | None = None):
        check_lr(lr)
        check_adam(adam_betas, adam_eps, clip_norm)
        check_one_of(stepper, "stepper", STEPPERS)
        check_one_of(compile, "compile", COMPILE_MODES)
        if compile in ("graph", "trace", "inductor") and stepper != "fast":
            raise ValueError(f"compile={compile!r} needs stepper='fast', got {stepper!r}")
        check_one_of(gemm, "gemm", GEMM_CHOICES)
        self.gemm = gemm
        self.ema_decay = None if ema_decay is None else check_decay(ema_decay)
        self.average: WeightAverage | None = None  # built with the stepper
        if distributed.enabled and stepper != "fast":
            raise ValueError(f"stepper {stepper!r} cannot train on several ranks; use 'fast'")
        check_one_of(on_nan, "on_nan", NAN_ACTIONS)
        self.compile, self.on_nan, self.distributed = compile, on_nan, distributed
        self.pair = as_pair(pair, model, guide)
        self.vae = self.pair.wrapped
        pyro.clear_param_store()
        self.pair.install()  # a pair set up before keeps its store parameters
        self.estimator = build_estimator(estimator, particles) if isinstance(estimator, str) \
            else estimator
        self.beta, self.kl_warmup = check_kl_weight(beta, kl_warmup, self.estimator)
        self._stepper_options = dict(
            stepper=stepper, lr=lr, clip_norm=clip_norm, on_nan=on_nan,
            betas=tuple(float(b) for b in adam_betas), eps=float(adam_eps))
        self._stepper: FastStepper | SVIStepper | None = None
        self._stepped_parameters: list[int] = []
        self._pending_state: dict | None = None  # loaded before the parameters were known
        self.epoch = 0
        self.history: list[dict] = []
        self.data_shape = self.pair.data_shape
        self.stop_requested = False  # set (e.g. by a signal handler) to stop after an epoch
        check_stepper_options(stepper, on_nan)
        if self._parameters_known():  # otherwise on the first batch (prepare)
            self._build_stepper()

    @property
    def stepper(self) -> FastStepper | SVIStepper:
        """The stepper, built over the pair's parameters once they are known."""
        if self._stepper is None:
            if not self._parameters_known():
                raise RuntimeError("the pair's parameters are not known yet (it has no "
                                   "nn.Module parameters; they appear on its first call): "
                                   "call fit(...) or prepare(example_batch) first")
            self._build_stepper()
        return self._stepper

    def _parameters_known(self) -> bool:
        return self.pair.is_set_up or next(iter(self.pair.parameters()), None) is not None

    def _build_stepper(self) -> None:
        params = list(self.pair.parameters())
        if not params:
            raise ValueError("the model and guide use no parameters: nothing to train")
        options = dict(self._stepper_options)
        step_class = FastStepper if options.pop("stepper") == "fast" else SVIStepper
        if self.beta != 1.0 or self.kl_warmup:  # before the stepper: SVI wraps the handlers
            self.estimator.set_kl_weight(self.beta_at(self.epoch + 1), params[0].device)
        if self.distributed.enabled:
            options["distributed"] = self.distributed
        lr, clip_norm = options.pop("lr"), options.pop("clip_norm")
        self._stepper = step_class(self.pair, self.estimator, lr, clip_norm, **options)
        self._stepped_parameters = [id(p) for p in params]
        if self.ema_decay is not None:
            self.average = WeightAverage(params, self.ema_decay)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._load_model_and_optimizer(state)

    def prepare(self, batch) -> None:
        """Find the pair's parameters on an example ``batch`` (a tensor or tuple of tensors;
        one run of guide and model on a forked RNG) and build the optimiser over them. ``fit``
        calls it on its first batch; parameters that appear after training started are an
        error (the optimiser could not see them)."""
        args = as_args(batch)
        self.pair.setup(*args)
        found = [id(p) for p in self.pair.parameters()]
        if self._stepper is not None and found != self._stepped_parameters:
            if self._stepper_has_stepped():
                raise RuntimeError("the model or guide created parameters after training "
                                   "started; create them on the first call (pyrovae finds "
                                   "them then) or in the module's constructor")
            self._stepper = None
        if self._stepper is None:
            self._build_stepper()
        if self._pending_state is not None:  # a state loaded before setup
            state, self._pending_state = self._pending_state, None
            self._load_model_and_optimizer(state)

    def _stepper_has_stepped(self) -> bool:
        if isinstance(self._stepper, FastStepper):
            return bool(self._stepper.optimizer.state)
        return bool(self._stepper.optimizer.optim_objs)

    def fit(
        self,
        train_x: Batch,
        epochs: int,
        batch_size: int = 128,
        test_x: Batch | None = None,
        dynamic_binarize: bool = False,
        callbacks: Sequence[Callback] = (),
        progress: bool | None = None,
        dequantize: bool = False,
    ) -> list[dict]:
        """Train until ``self.epoch == epochs`` (so a restored trainer continues where it was).

        Args:
            train_x: ``(N, *data_shape)`` on the model's device (this rank's shard), or a
                tuple of such tensors (the model's arguments, the data first).
            epochs: total number of epochs to reach.
            batch_size: mini-batch size (of this rank); the last partial batch of each epoch
                is dropped.
            test_x: optional held-out data; its ELBO is measured after each epoch.
            dynamic_binarize: resample binary data from the grey levels in every batch.
            dequantize: dequantise 8-bit data afresh in every batch (``(k + u) / 256``).
            callbacks: :class:`~pyrovae.training.callbacks.Callback` objects, called in
                order with host values (checkpoints, metrics files, signals).
            progress: a :class:`~pyrovae.training.callbacks.ProgressBar` is added unless
                ``False``; ``None`` shows it only on a terminal.

        Returns:
            ``self.history``: one dict per epoch with ``epoch``, ``train_elbo`` and
            ``test_elbo`` (nats per datum, higher is better; a one-sample estimate) and
            ``seconds`` (training time of the epoch), and ``skipped_steps`` when
            ``on_nan="skip"`` skipped any.

        Raises:
            NonFiniteLossError: with ``on_nan="stop"``, after an epoch in which a loss or
                gradient was NaN or infinite; that epoch is not recorded and no callback's
                ``on_epoch_end`` sees it, so the last checkpoint stays the good one.
        """
        check_int(epochs, "epochs")
        self.check_data(train_x, "train_x")
        if test_x is not None:
            self.check_data(test_x, "test_x")
        batches = DeviceBatches(train_x, batch_size, dynamic_binarize, dequantize)
        if self._stepper is None or not self.pair.is_set_up:  # once: a resumed fit is ready
            self.prepare(take(train_x, slice(0, batch_size)))
        choose_step_mode(self.stepper, self.compile, self.gemm, self.distributed, self.pair,
                         self.estimator, take(train_x, slice(0, batch_size)),
                         (epochs - self.epoch) * len(batches))
        if getattr(self.stepper, "traced", None) is not None:  # state may have changed
            self.stepper.traced.check_next_replay()                # since the last fit
        callbacks = list(callbacks) + ([ProgressBar(progress)] if progress is not False else [])
        try:
            for callback in callbacks:
                callback.on_fit_start(self, epochs)
            while self.epoch < epochs:
                metrics = self._epoch(batches, batch_size, test_x)
                for callback in callbacks:
                    callback.on_epoch_end(self, metrics)
                if self.distributed.enabled:  # every rank stops after the same epoch
                    flag = torch.tensor([float(self.stop_requested)], device=self.device)
                    self.stop_requested = bool(all_reduce(flag, self.distributed, "max").item())
                if self.stop_requested:
                    logger.warning("stopping after epoch %d, as asked", self.epoch)
                    break
        except BaseException as error:
            for callback in callbacks:
                callback.on_exception(self, error)
            raise
        finally:
            for callback in callbacks:
                callback.on_fit_end(self)
        return self.history

    def _epoch(self, batches: DeviceBatches, batch_size: int, test_x: Batch | None) -> dict:
        """Train one epoch, record it in ``history`` and return its metrics (host values)."""
        beta = self.beta_at(self.epoch + 1)
        if self.estimator.kl_weight is not None:
            self.estimator.set_kl_weight(beta)  # in place: a captured graph sees it
        ctx = self.distributed
        if ctx.enabled:  # own draws and order per rank, resumable by epoch
            pyro.set_rng_seed(rank_seed(ctx.seed, self.epoch + 1, ctx.rank))
        start = time.perf_counter()
        average = self.average
        for x in batches:
            self.stepper.step(x)
            if average is not None:
                average.update()
        stats = self.stepper.take_epoch()
        seconds = time.perf_counter() - start
        late = self.pair.new_store_names()  # a few set operations on the host, per epoch
        if late:
            raise RuntimeError(f"the model or guide created parameters after training "
                               f"started ({', '.join(late)}): the optimiser does not train "
                               "them; create them on the first call (pyrovae finds them "
                               "then) or in the module's constructor")
        if stats.bad_steps and self.on_nan == "stop":
            raise NonFiniteLossError(self.epoch + 1, stats.first_bad_step, stats.bad_steps,
                                     stats.steps)
        good = stats.steps - stats.bad_steps
        data_per_step = batch_size * ctx.world_size
        train_elbo = -stats.loss_sum / (good * data_per_step) if good else math.nan
        self.epoch += 1
        metrics = {"epoch": self.epoch, "train_elbo": train_elbo, "seconds": seconds,
                   "beta": beta}
        if stats.bad_steps:
            metrics["skipped_steps"] = stats.bad_steps
            logger.warning("epoch %d: skipped %d of %d steps with a NaN/infinite loss or "
                           "gradient", self.epoch, stats.bad_steps, stats.steps)
        if test_x is not None:
            metrics["test_elbo"] = self.evaluate(test_x, batch_size)
        self.history.append(metrics)
        logger.info("epoch %d: %s", self.epoch, metrics)
        return metrics

    @property
    def lr(self) -> float:
        """The learning rate the next steps train with."""
        return float(self._stepper_options["lr"])

    def set_lr(self, lr: float) -> None:
        """Train the next steps with learning rate ``lr`` (> 0), e.g. from a schedule."""
        check_lr(lr)
        self._stepper_options["lr"] = float(lr)
        if self._stepper is not None:
            self._stepper.set_lr(float(lr))

    def check_data(self, data: Batch, what: str = "data") -> None:
        """``TypeError``/``ValueError`` unless ``data`` fits the model (a one-off check,
        outside the training step): :func:`~pyrovae.training.checks.check_fit_data` with
        the model's ``data_shape``, parameters and device."""
        check_fit_data(data, what, self.data_shape, next(iter(self.pair.parameters()), None))

    @property
    def device(self) -> torch.device:
        """Where the pair's parameters live (the CPU before any exist)."""
        param = next(iter(self.pair.parameters()), None)
        return param.device if param is not None else torch.device("cpu")

    def beta_at(self, epoch: int) -> float:
        """The KL weight of epoch ``epoch`` (1-based): B min(1, (epoch - 1) / N)."""
        if not self.kl_warmup:
            return self.beta
        return self.beta * min(1.0, (epoch - 1) / self.kl_warmup)

    def averaged(self):
        """A context manager: inside it the pair's parameters hold the Polyak average of
        the weights (``ema_decay``), afterwards the trained ones again. ``ValueError``
        when the trainer keeps no average."""
        if self.ema_decay is None:
            raise ValueError("this trainer keeps no average of the weights: pass ema_decay "
                             "(--ema-decay)")
        self.stepper  # noqa: B018 -- the average is built with the stepper
        return self.average.swapped()

    def evaluate(self, x: Batch, batch_size: int = 1000) -> float:
        """The estimator's unweighted bound (beta = 1) of ``x``, nats per datum, drawn from a
        forked RNG (training is unaffected); with several ranks, ``x`` is this rank's shard
        and the result the mean over all ranks' data."""
        if not self.pair.is_set_up:
            self.pair.setup(*take(x, slice(0, 1)))
        with forked_rng(as_args(x)[0]):
            mean = evaluate_elbo(self.pair, x, batch_size, self.estimator)
        return reduce_mean(mean, num_data(x), self.distributed, as_args(x)[0].device)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: model, optimiser, RNG, epoch, history;
        with ``ema_decay``, also ``ema`` (the average's state) and ``averaged_model`` (the
        pair's ``state_dict`` with the averaged weights: what a run evaluates)."""
        if self._pending_state is not None:  # loaded, not yet applied: the same state
            model, optimizer = self._pending_state["model"], self._pending_state["optimizer"]
            extra = {k: v for k, v in self._pending_state.items() if k not in
                     ("model", "optimizer")}
        else:
            model, optimizer = self.pair.state_dict(), self.stepper.state_dict()
            extra = {}
            if self.average is not None:
                with self.average.swapped():
                    averaged = {k: v.clone() for k, v in self.pair.state_dict().items()}
                extra = {"ema": self.average.state_dict(), "averaged_model": averaged}
        return {**extra,
            "model": model,
            "optimizer": optimizer,
            "rng": rng_state(),
            "epoch": self.epoch,
            "history": list(self.history),
            "gemm": self._gemm_used(),
        }

    def _gemm_used(self) -> str:
        """The matrix products' library a traced step took (or will take: ``self.gemm``)."""
        traced = getattr(self._stepper, "traced", None)
        return traced.gemm_used if traced is not None and traced.gemm_used else self.gemm

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. For a pair whose parameters appear on its first call,
        the model and optimiser states wait for :meth:`prepare` (the first batch of ``fit``);
        the RNG state, epoch and history are restored at once."""
        set_rng_state(state["rng"])
        if state.get("gemm") in ("default", "onednn"):  # the path the run took: the same
            self.gemm = state["gemm"]                     # numbers on resume
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        unseen = not self.pair.is_set_up and any(k.startswith(STORE_PREFIX)
                                                 for k in state["model"])
        if (self._stepper is None and not self._parameters_known()) or unseen:
            # Pyro store parameters appear on the first call: load once they exist
            self._pending_state = {key: state[key] for key in
                                   ("model", "optimizer", "ema", "averaged_model")
                                   if key in state}
            return
        self._load_model_and_optimizer(state)

    def _load_model_and_optimizer(self, state: dict) -> None:
        self.pair.load_state_dict(state["model"])
        self.stepper.load_state_dict(state["optimizer"])
        if self.average is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint has no average of the weights (it was "
                                 "trained without --ema-decay); resume without it")
            self.average.load_state_dict(state["ema"])


