"""Callbacks: the side effects of the training loop, outside the Trainer.

:meth:`Trainer.fit <pyrovae.training.trainer.Trainer.fit>` calls each callback's hooks with
host values only (the metrics dict is read once per epoch, as before), so no callback adds a
host-device sync to the step:

    on_fit_start(trainer, epochs)       before the first epoch of this call
    on_epoch_end(trainer, metrics)      after each recorded epoch (metrics: host floats)
    on_exception(trainer, error)        when the loop raises (then the error propagates)
    on_fit_end(trainer)                 always, last (after an exception too)

Here: :class:`ProgressBar` (tqdm) and :class:`StopOnSigint` (a first Ctrl-C stops after the
epoch). The callbacks that write run files (checkpoints, ``metrics.jsonl``) live with the run
folders, in :mod:`pyrovae.runs.callbacks`: the Trainer itself writes no file.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_fit_start(self, trainer, epochs: int) -> None:
        """Before the first epoch of :meth:`~pyrovae.training.trainer.Trainer.fit`."""

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        """After epoch ``metrics["epoch"]`` is recorded in ``trainer.history``."""

    def on_exception(self, trainer, error: BaseException) -> None:
        """The loop raised ``error`` (it is re-raised after every callback has seen it)."""

    def on_fit_end(self, trainer) -> None:
        """Last, whether the loop finished, stopped early or raised."""


class ProgressBar(Callback):
    """A tqdm bar over epochs with the latest ELBOs; ``show=None``: only on a terminal."""

    def __init__(self, show: bool | None = None):
        self.show = show
        self.bar = None

    def on_fit_start(self, trainer, epochs: int) -> None:
        show = sys.stderr.isatty() if self.show is None else self.show
        self.bar = tqdm(total=epochs, initial=trainer.epoch, unit="epoch", desc="training",
                        disable=not (show and trainer.distributed.is_main))

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.bar.set_postfix({k: f"{v:.2f}" for k, v in metrics.items() if k.endswith("elbo")})
        self.bar.update(1)

    def on_fit_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSigint(Callback):
    """First SIGINT (Ctrl-C): ask the trainer to stop after this epoch; second: interrupt now.

    Installed for the duration of ``fit`` (main thread only; elsewhere it does nothing).
    """

    def __init__(self):
        self.previous = None

    def on_fit_start(self, trainer, epochs: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if trainer.stop_requested:
                raise KeyboardInterrupt
            trainer.stop_requested = True
            print("\npyrovae: stopping after this epoch (checkpoint follows); Ctrl-C again to "
                  "abort now", file=sys.stderr, flush=True)

        self.previous = signal.signal(signal.SIGINT, handler)

    def on_fit_end(self, trainer) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class NllProgress:
    """A tqdm bar for ``evaluate --nll-samples`` (minutes of work): data done, the running
    test NLL, time left. Shown on a terminal only (``show=None``), on rank 0. Use as a
    context manager; pass it as ``progress`` to
    :func:`~pyrovae.inference.evaluation.nll_report`."""

    def __init__(self, total: int, samples: int, show: bool | None = None,
                 is_main: bool = True):
        show = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(total=total, unit="datum", desc=f"test NLL (IWAE-{samples})",
                        disable=not (show and is_main))
        self.done, self.nll_sum = 0, 0.0

    def __call__(self, n: int, nll_sum: float) -> None:
        self.done, self.nll_sum = self.done + n, self.nll_sum + nll_sum
        self.bar.set_postfix(nll=f"{self.nll_sum / self.done:.2f}")
        self.bar.update(n)

    def __enter__(self) -> NllProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
