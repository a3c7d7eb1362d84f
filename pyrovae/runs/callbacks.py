"""The training callbacks that write a run folder's files (rank 0 alone adds them).

:class:`SaveCheckpoint` writes ``checkpoint.pt`` after every epoch; :class:`MetricsLog`
keeps ``metrics.jsonl``: rewritten from the trainer's history when training starts (so lines
written after the last checkpoint by a crashed run disappear), one line per epoch, and an
event line when training stops on a non-finite loss. :class:`ReplaceSetAside` keeps the run
that ``--force`` replaces until the new one has a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pyrovae.runs.checkpoints import save_checkpoint
from pyrovae.runs.folders import drop_set_aside, put_back, to_json, write_metrics
from pyrovae.training.callbacks import Callback
from pyrovae.training.trainer import NonFiniteLossError


class SaveCheckpoint(Callback):
    """``checkpoint.pt`` (:func:`~pyrovae.runs.checkpoints.save_checkpoint`) every epoch."""

    def __init__(self, path: Path, config, data_shape: tuple[int, ...]):
        self.path, self.config, self.data_shape = Path(path), config, tuple(data_shape)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        save_checkpoint(self.path, trainer, self.config, self.data_shape)


class MetricsLog(Callback):
    """``RUN_DIR/metrics.jsonl``: one JSON object per epoch, plus a ``non_finite`` event."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(to_json(record) + "\n")

    def on_fit_start(self, trainer, epochs: int) -> None:
        write_metrics(self.path.parent, trainer.history)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self._append(metrics)

    def on_exception(self, trainer, error: BaseException) -> None:
        if isinstance(error, NonFiniteLossError):
            self._append({"event": "non_finite", "epoch": error.epoch, "step": error.step,
                          "bad_steps": error.bad_steps, "steps": error.steps,
                          "action": "stopped"})


class ReplaceSetAside(Callback):
    """``--force``: the old run (set aside in ``RUN_DIR/.replaced``) is dropped once the new
    run's first checkpoint is written, and put back if the new run ends before that (a
    failed setting, a NaN in epoch 1, Ctrl-C), so no failure loses a finished run. Place it
    after :class:`SaveCheckpoint`."""

    def __init__(self, run_dir: Path, aside: Path):
        self.run_dir, self.aside = Path(run_dir), aside

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        if self.aside is not None:
            drop_set_aside(self.aside)
            self.aside = None

    def on_fit_end(self, trainer) -> None:
        if self.aside is not None:
            put_back(self.run_dir, self.aside)
            self.aside = None

