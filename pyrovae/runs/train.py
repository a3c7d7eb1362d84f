"""``train_run``: a config trained into a run folder, resumable, on one or several ranks.

This is wiring: the config's job (:mod:`pyrovae.runs.jobs`) builds the module and data,
the :class:`~pyrovae.training.trainer.Trainer` trains, and callbacks write the run files
(:mod:`pyrovae.runs.callbacks`), stop on SIGINT and show progress
(:mod:`pyrovae.training.callbacks`). The folder's layout: :mod:`pyrovae.runs.folders`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import pyro
import torch

from pyrovae.components.data import check_batch_size, load_dataset
from pyrovae.inference.pair import take
from pyrovae.runs.callbacks import MetricsLog, ReplaceSetAside, SaveCheckpoint
from pyrovae.runs.checkpoints import RESUME_FIELDS, ConfigMismatch, load_checkpoint
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.folders import (
    check_new_run_dir,
    default_run_dir,
    environment,
    environment_with_history,
    locked_run_dir,
    prepare_run_dir,
    put_back,
    recover_set_aside,
    set_aside_run,
    wait_for_recovery,
    write_json,
)
from pyrovae.runs.jobs import job_for
from pyrovae.runs.tensorboard import TensorBoardLog, tensorboard_available
from pyrovae.training import distributed
from pyrovae.training.callbacks import StopOnSigint
from pyrovae.training.trainer import NonFiniteLossError, Trainer, resolve_device

logger = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped at an epoch boundary on SIGINT, after writing the checkpoint."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        super().__init__(f"interrupted after epoch {epoch}; the checkpoint in {run_dir} is "
                         f"complete: continue with --resume --out {run_dir}")


def train_run(config: TrainConfig | None, out: str | Path | None = None,
              resume: bool = False, force: bool = False, progress: bool | None = None,
              changes: dict | None = None, tensorboard: bool = True) -> Path:
    """Train ``config`` into the run folder ``out`` and return the folder.

    ``resume`` continues from ``out/checkpoint.pt`` with the saved config, reproducing on
    the CPU the numbers of an uninterrupted run: ``epochs``, ``device`` and ``dist_timeout``
    (:data:`~pyrovae.runs.checkpoints.RESUME_FIELDS`) come from ``config``; or, with
    ``config=None``, from ``changes`` (the fields a user gave; those not given keep their
    saved values, and any other field given must equal its saved value). A total of
    ``epochs`` below those trained is refused. An existing run folder is refused unless
    ``resume`` or ``force`` (which sets the old run aside until the new one has written its
    first checkpoint). Every input is checked before anything is written.

    A first SIGINT (Ctrl-C) finishes the current epoch, writes its checkpoint and raises
    :class:`RunInterrupted`; a second one interrupts at once (the last checkpoint stays).
    ``tensorboard``: write ``RUN_DIR/tensorboard/`` events when the package is installed
    (:mod:`pyrovae.runs.tensorboard`).
    """
    ctx = distributed.from_environment()
    if out is None and (ctx.enabled or resume):
        raise ValueError("--resume needs --out RUN_DIR" if resume else
                         f"pass --out when training on {ctx.world_size} ranks: every rank "
                         "must name the same run folder")
    if config is None and not resume:
        raise ValueError("train_run needs a config (only a resumed run takes its saved one)")
    if config is not None:
        config.validate()
        changes = {name: getattr(config, name) for name in RESUME_FIELDS}
    run_dir = Path(out) if out is not None else default_run_dir(config)
    # rank 0 holds the folder's lock from the checks to the end: a second process on it is
    # refused (two resumes, or a --force beside a resume, would mix their files)
    with locked_run_dir(run_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:  # a --force run killed before its first checkpoint: undo it
            recover_set_aside(run_dir)
        else:  # ...before this rank reads the folder
            wait_for_recovery(run_dir, (changes or {}).get("dist_timeout") or 600.0
                              if config is None else config.dist_timeout)
        config, replaces = _check_run_dir(config, run_dir, resume, force, changes or {})
        device = distributed.device_for(ctx, resolve_device(config.device))
        ctx = replace(ctx, seed=config.seed)
        created = distributed.init(ctx, device, config.dist_timeout)
        try:
            distributed.barrier(ctx)  # all ranks have checked the folder before rank 0 writes
            return _train(config, run_dir, resume, replaces, progress, ctx, device,
                          tensorboard)
        except RuntimeError as error:
            if ctx.enabled and not isinstance(error, NonFiniteLossError):
                logger.error("rank %d of %d: training failed", ctx.rank, ctx.world_size,
                             exc_info=True)  # the traceback, before the one-line summary
                raise distributed.RankFailure(ctx, config.dist_timeout, error) from error
            raise
        finally:
            distributed.shutdown(created)


def _train(config: TrainConfig, run_dir: Path, resume: bool, replaces: bool, progress,
           ctx: distributed.Distributed, device: torch.device, tensorboard: bool) -> Path:
    """:func:`train_run` once the folder is checked (``replaces``: old run files are set
    aside) and the process group (if any) joined; rank 0 alone writes."""
    pyro.set_rng_seed(config.seed)
    job = job_for(config, device)
    if config.download and ctx.enabled:  # rank 0 downloads; the others then read the files
        if ctx.is_main:
            load_dataset(config.dataset, config.data_dir, True)
        distributed.barrier(ctx)
    job.prepare(load_dataset(config.dataset, config.data_dir, config.download and ctx.is_main,
                             config.test_fraction, config.layout))
    check_batch_size(config.batch_size, len(job.train_x))
    distributed.check_shardable(len(job.test_x), ctx, "the test set")
    batch_size = distributed.local_batch_size(config.batch_size, ctx)
    train_x = distributed.shard(job.train_x, ctx, equal=True)
    test_x = distributed.shard(job.test_x, ctx, equal=False)
    trainer = Trainer(job.module, config.build_estimator(), lr=config.lr,
                      clip_norm=config.clip_norm, stepper=config.stepper,
                      compile=config.compile, gemm=config.gemm, on_nan=config.on_nan,
                      beta=config.beta, kl_warmup=config.kl_warmup, distributed=ctx,
                      ema_decay=config.ema_decay)
    checkpoint = run_dir / "checkpoint.pt"
    if resume:
        try:  # config is the run's config.json
            state = load_checkpoint(checkpoint, config)["trainer"]
        except ConfigMismatch as error:
            raise error.edited() from None
        trainer.load_state_dict({**state, "model": job.upgrade_state(state["model"])})
        if config.epochs < trainer.epoch:
            raise ValueError(f"--resume: {run_dir} has trained {trainer.epoch} epochs, more "
                             f"than --epochs {config.epochs}; pass a larger total to train on"
                             " (or none, to finish the run as configured)")
        logger.info("resumed %s at epoch %d", run_dir, trainer.epoch)
    callbacks = [StopOnSigint()]
    aside = None
    if ctx.is_main:
        prepare_run_dir(run_dir)
        if replaces:  # the old run is set aside, not lost
            aside = set_aside_run(run_dir)
        callbacks = [SaveCheckpoint(checkpoint, config, job.data_shape),
                     ReplaceSetAside(run_dir, aside), MetricsLog(run_dir), *callbacks]
        if tensorboard and tensorboard_available():  # before the checkpoint: see its module
            callbacks.insert(0, TensorBoardLog(run_dir, config.to_dict(),
                                               take(test_x, slice(0, 16))))
        elif tensorboard:
            logger.warning("note: tensorboard is not installed, so no TensorBoard events "
                           "are written (pip install pyrovae[tensorboard])")
    try:
        if ctx.is_main:
            write_json(run_dir / "config.json", config.to_dict())
            now = environment(device, ctx.world_size)
            write_json(run_dir / "environment.json",
                       environment_with_history(run_dir, now) if resume else now)
    except BaseException:
        if aside is not None:
            put_back(run_dir, aside)
        raise
    trainer.fit(train_x, config.epochs, batch_size, test_x=test_x,
                dynamic_binarize=config.binarize == "dynamic", callbacks=callbacks,
                progress=progress, dequantize=config.dequantize)
    if trainer.epoch < config.epochs:
        raise RunInterrupted(run_dir, trainer.epoch)
    if ctx.is_main:  # what the kind writes at the end: figures, baselines
        with trainer.averaged() if trainer.average is not None else contextlib.nullcontext():
            job.finish(trainer.history, run_dir)
    return run_dir


def _check_run_dir(config: TrainConfig | None, run_dir: Path, resume: bool, force: bool,
                   changes: dict) -> tuple[TrainConfig, bool]:
    """The config to train in ``run_dir`` (when resuming, the saved one with ``changes``:
    see :func:`train_run`), and whether the new run replaces old run files (``--force``, or
    a half-made folder); writes nothing."""
    if not resume:
        return config, check_new_run_dir(run_dir, force)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"--resume: {run_dir} is not a pyrovae run folder (no config.json)")
    if not (run_dir / "checkpoint.pt").is_file():
        raise ValueError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}; start "
                         "a new run without --resume")
    saved = TrainConfig.load(run_dir / "config.json")
    for name, value in changes.items():
        if name in RESUME_FIELDS:
            setattr(saved, name, value)
        elif value != getattr(saved, name):
            allowed = ", ".join("--" + f.replace("_", "-") for f in RESUME_FIELDS)
            raise ValueError(f"--resume continues {run_dir} with its saved config: "
                             f"--{name.replace('_', '-')} {value!r} differs from its "
                             f"{getattr(saved, name)!r} (only {allowed} may change; start a "
                             "new run for other settings)")
    return saved.validate(), False
