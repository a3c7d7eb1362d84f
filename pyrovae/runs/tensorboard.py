"""TensorBoard events of a training run, in ``RUN_DIR/tensorboard/`` (a training callback).

On by default when the ``tensorboard`` package is installed (``pip install
pyrovae[tensorboard]``; ``pyrovae train --no-tensorboard`` turns it off); without it,
training logs a one-line note and carries on. Per epoch (the step is the epoch, 1-based):
``elbo/train``, ``elbo/test``, ``beta``, ``seconds``, ``skipped_steps`` and ``lr``; every
``images_every`` epochs (and at the last) a grid of samples and one of reconstructions of the
first test images, drawn on a forked RNG so that training draws what it would without them;
when training ends, the run's config as hparams with its final bounds.

A resumed run continues the same event stream: the writer is opened with ``purge_step`` at
the first epoch it trains, so TensorBoard drops what a killed run wrote past its last
checkpoint, and no step appears twice. The callback runs before the checkpoint is written.
Reads on the host: the epoch's metrics (already read), and the images every N epochs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from pyrovae.components.rng import forked_rng
from pyrovae.inference.generation import Generator
from pyrovae.runs.plots import image_grid
from pyrovae.training.callbacks import Callback

logger = logging.getLogger(__name__)

EVENTS_DIR = "tensorboard"
SCALARS = {"train_elbo": "elbo/train", "test_elbo": "elbo/test", "beta": "beta",
           "seconds": "seconds", "skipped_steps": "skipped_steps"}


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog(Callback):
    """Write ``run_dir/tensorboard/`` events (see the module docstring).

    Args:
        run_dir: the run folder.
        config: a dict of the run's config fields (for hparams).
        examples: test data (or a tuple of the model's arguments) for the images; ``None``:
            no images.
        images_every: epochs between image grids.
    """

    def __init__(self, run_dir: Path, config: dict, examples=None, images_every: int = 10):
        self.log_dir = Path(run_dir) / EVENTS_DIR
        self.config, self.examples, self.images_every = config, examples, images_every
        self.writer = None
        self.last = {}
        self.epochs = 0

    def on_fit_start(self, trainer, epochs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.epochs = epochs
        # a resumed run: TensorBoard drops what was written from this epoch on
        self.writer = SummaryWriter(str(self.log_dir),
                                    purge_step=trainer.epoch + 1 if trainer.epoch else None)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        step = metrics["epoch"]
        for key, tag in SCALARS.items():
            value = metrics.get(key, 0 if key == "skipped_steps" else None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("lr", trainer.lr, step)
        if self.examples is not None and (step % self.images_every == 0
                                          or step == self.epochs):
            try:
                self._images(trainer, step)
            except Exception as error:  # noqa: BLE001 - a figure must not stop training
                logger.warning("TensorBoard: no images for this model (%s: %s)",
                               type(error).__name__, error)
                self.examples = None
        self.writer.flush()
        self.last = metrics

    def _images(self, trainer, step: int) -> None:
        first = self.examples[0] if isinstance(self.examples, tuple) else self.examples
        with forked_rng(first.device):
            generator = Generator(trainer.pair, self.examples)
            for tag, images in (("samples", generator.sample(len(first))),
                                ("reconstructions", generator.reconstruct(self.examples))):
                grid = _as_grid(images)
                if grid is not None:
                    self.writer.add_image(tag, grid, step, dataformats="HW" if grid.dim() == 2
                                          else "HWC")

    def on_fit_end(self, trainer) -> None:
        if self.writer is None:
            return
        if self.last:
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in self.config.items() if v is not None}
            final = {f"hparam/{k}": v for k, v in self.last.items()
                     if k.endswith("elbo") and isinstance(v, float) and math.isfinite(v)}
            self.writer.add_hparams(hparams, final, run_name=".", global_step=self.last["epoch"])
        self.writer.close()
        self.writer = None


def _as_grid(images: torch.Tensor) -> torch.Tensor | None:
    """``(N, C, H, W)`` (or flat square images ``(N, H*W)``) as one grid; ``None`` for data
    that are not images."""
    images = images.detach().float().cpu()
    if images.dim() == 2 and math.isqrt(images.shape[1]) ** 2 == images.shape[1]:
        side = math.isqrt(images.shape[1])
        images = images.reshape(-1, 1, side, side)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        return None
    return image_grid(images, rows=max(1, math.isqrt(len(images))))
