"""Run folders: train a config into a folder, checkpoint atomically, resume, load back.

A run folder holds::

    config.json        the TrainConfig, as written when the run started
    metrics.jsonl      one JSON line per epoch (epoch, train_elbo, test_elbo, seconds)
    checkpoint.pt      model, optimiser, RNG states, epoch, history, config (every epoch)
    figures/*.png      samples, reconstructions, curves (and latent when z_dim == 2)
    environment.json   versions of pyrovae, Pyro, torch, Python; the device
    evaluation.json    written by ``pyrovae evaluate``

Checkpoints are written to a temporary file, flushed to disk and moved into place with
``os.replace``: a run killed at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import distributed, plots
from pyrovae.config import TrainConfig
from pyrovae.data import Dataset, binarize, check_batch_size, load_dataset
from pyrovae.guides import build_guide
from pyrovae.likelihoods import build_likelihood
from pyrovae.model import VAE
from pyrovae.priors import build_prior
from pyrovae.rng import forked_rng
from pyrovae.training import NonFiniteLossError, Trainer, resolve_device

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "pyrovae-checkpoint"
CHECKPOINT_VERSION = 1
RUN_FILES = ("config.json", "environment.json", "metrics.jsonl", "checkpoint.pt",
             "evaluation.json", "baseline.pt")


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def build_vae(config: TrainConfig, data_shape: tuple[int, ...]) -> VAE:
    """The VAE a config describes (prior, likelihood, guide, networks), on the CPU.

    Each component takes the options of the config that its constructor declares
    (``sigma``, ``components``, ``flow_steps``, ``hidden``) and ignores the others.
    """
    options = {"sigma": config.sigma, "components": config.components,
               "flow_steps": config.flow_steps, "hidden": tuple(config.hidden)}
    return VAE(data_shape, z_dim=config.z_dim, hidden=config.hidden,
               activation=config.activation,
               prior=build_prior(config.prior, config.z_dim, **options),
               likelihood=build_likelihood(config.likelihood, **options),
               guide=build_guide(config.guide, data_shape, config.z_dim, **options))


def prepare_data(config: TrainConfig, vae: VAE, data: Dataset, device: torch.device) -> Dataset:
    """Binarise (static) and check ``data`` against the likelihood; move it to ``device``."""
    if config.binarize == "static":
        data.train_x = binarize(data.train_x, "static", seed=config.seed)
    if config.binarize != "none":  # the test set is binarised once, with a fixed seed
        data.test_x = binarize(data.test_x, "static", seed=config.seed + 1)
    # the model sees binary data under dynamic binarisation: check one draw of it
    seen = binarize(data.train_x, "static") if config.binarize == "dynamic" else data.train_x
    vae.likelihood.check(seen)
    return data.to(device)


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.likelihood}-z{config.z_dim}"


class RunInterrupted(KeyboardInterrupt):
    """Training stopped at an epoch boundary on SIGINT, after writing the checkpoint."""

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        super().__init__(f"interrupted after epoch {epoch}; the checkpoint in {run_dir} is "
                         f"complete: continue with --resume --out {run_dir}")


def train_run(config: TrainConfig, out: str | Path | None = None, resume: bool = False,
              force: bool = False, progress: bool | None = None) -> Path:
    """Train ``config`` into the run folder ``out`` and return the folder.

    ``resume`` continues from ``out/checkpoint.pt`` with the saved config (``epochs`` and
    ``device`` taken from ``config``), reproducing on the CPU the numbers of an uninterrupted
    run. An existing run folder is refused unless ``resume`` or ``force`` (which deletes its
    run files). Every input is checked before anything is written.

    A first SIGINT (Ctrl-C) finishes the current epoch, writes its checkpoint and raises
    :class:`RunInterrupted`; a second one interrupts at once (the last checkpoint stays).
    """
    ctx = distributed.from_environment()
    if ctx.enabled and out is None:
        raise ValueError(f"pass --out when training on {ctx.world_size} ranks: every rank "
                         "must name the same run folder")
    run_dir, config = _check_run_dir(config, out, resume, force)  # every rank; reads only
    device = distributed.device_for(ctx, resolve_device(config.device))
    ctx = replace(ctx, seed=config.seed)
    created = distributed.init(ctx, device, config.dist_timeout)
    try:
        distributed.barrier(ctx)  # all ranks have checked the folder before rank 0 writes
        return _train(config, run_dir, resume, force, progress, ctx, device)
    except RuntimeError as error:
        if ctx.enabled and not isinstance(error, NonFiniteLossError):
            logger.error("rank %d of %d: training failed", ctx.rank, ctx.world_size,
                         exc_info=True)  # the traceback, before the one-line summary
            raise distributed.RankFailure(ctx, config.dist_timeout, error) from error
        raise
    finally:
        distributed.shutdown(created)


def _train(config: TrainConfig, run_dir: Path, resume: bool, force: bool, progress,
           ctx: distributed.Distributed, device: torch.device) -> Path:
    """:func:`train_run` once the folder is checked and the process group (if any) joined;
    rank 0 alone writes."""
    pyro.set_rng_seed(config.seed)
    if config.download and ctx.enabled:  # rank 0 downloads; the others then read the files
        if ctx.is_main:
            load_dataset(config.dataset, config.data_dir, True)
        distributed.barrier(ctx)
    data = load_dataset(config.dataset, config.data_dir, config.download and ctx.is_main)
    if config.model == "cvae":  # the conditional VAE: its own data, baseline and figures
        from pyrovae.cvae_runs import CVAEJob

        job = CVAEJob(config, data, device)
    else:
        job = VAEJob(config, data, device)
    vae = job.module
    check_batch_size(config.batch_size, len(job.train_x))
    distributed.check_shardable(len(job.test_x), ctx, "the test set")
    batch_size = distributed.local_batch_size(config.batch_size, ctx)
    train_x = distributed.shard(job.train_x, ctx, equal=True)
    test_x = distributed.shard(job.test_x, ctx, equal=False)
    vae.to(device)
    trainer = Trainer(vae, config.build_estimator(), lr=config.lr, clip_norm=config.clip_norm,
                      stepper=config.stepper, compile=config.compile, on_nan=config.on_nan,
                      beta=config.beta, kl_warmup=config.kl_warmup, distributed=ctx)
    checkpoint = run_dir / "checkpoint.pt"
    if resume:
        trainer.load_state_dict(load_checkpoint(checkpoint, config)["trainer"])
        logger.info("resumed %s at epoch %d", run_dir, trainer.epoch)
    if ctx.is_main:
        if force and not resume:
            _clear_run_files(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for torn in run_dir.glob(".*.tmp"):  # left by a run killed in the middle of a write
            torn.unlink()
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "environment.json", environment(device, ctx.world_size))
        _write_metrics(run_dir, trainer.history)

    def on_epoch_end(trainer: Trainer, metrics: dict) -> None:
        if not ctx.is_main:
            return
        save_checkpoint(checkpoint, trainer, config)
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    try:
        with _stop_on_sigint(trainer):
            trainer.fit(train_x, config.epochs, batch_size, test_x=test_x,
                        dynamic_binarize=config.binarize == "dynamic",
                        on_epoch_end=on_epoch_end, progress=progress)
    except NonFiniteLossError as error:
        event = {"event": "non_finite", "epoch": error.epoch, "step": error.step,
                 "bad_steps": error.bad_steps, "steps": error.steps, "action": "stopped"}
        if ctx.is_main:
            with open(run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(event) + "\n")
        raise
    if trainer.epoch < config.epochs:
        raise RunInterrupted(run_dir, trainer.epoch)
    if ctx.is_main:  # figures (and, for a CVAE, the baseline) from the full data
        job.finish(trainer.history, run_dir)
    return run_dir


class VAEJob:
    """What :func:`train_run` trains for a ``model="vae"`` config: the VAE (``module``) and
    its prepared data (``train_x``, ``test_x`` on ``device``); ``finish`` draws the figures.
    (``model="cvae"``: :class:`pyrovae.cvae_runs.CVAEJob`.)"""

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device):
        self.config = config
        self.module = build_vae(config, data.image_shape)
        self.data = prepare_data(config, self.module, data, device)
        self.train_x, self.test_x = self.data.train_x, self.data.test_x

    def finish(self, history: list[dict], run_dir: Path) -> None:
        write_figures(self.module, self.data, history, run_dir / "figures",
                      seed=self.config.seed)


def _check_run_dir(config: TrainConfig, out, resume: bool, force: bool
                   ) -> tuple[Path, TrainConfig]:
    """The run folder and the config to train (the saved one when resuming); writes nothing."""
    config.validate()
    run_dir = Path(out) if out is not None else default_run_dir(config)
    if resume:
        if not (run_dir / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}; start "
                             "a new run without --resume")
        saved = TrainConfig.load(run_dir / "config.json")
        saved.epochs, saved.device = config.epochs, config.device
        saved.dist_timeout = config.dist_timeout
        return run_dir, saved.validate()
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise ValueError(f"run folder {run_dir} exists and is not empty; pass --resume to "
                         "continue it, --force to overwrite it, or another --out")
    return run_dir, config


def _clear_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for png in (run_dir / "figures").glob("*.png"):
        png.unlink()


@contextlib.contextmanager
def _stop_on_sigint(trainer: Trainer):
    """First SIGINT: ask the trainer to stop after this epoch; second: interrupt now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\npyrovae: stopping after this epoch (checkpoint follows); Ctrl-C again to "
              "abort now", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def environment(device: torch.device, world_size: int = 1) -> dict:
    """Versions and device of a run, for the record (``world_size``: ranks training)."""
    return {
        "pyrovae": pyrovae.__version__, "pyro": pyro.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (drops lines past a crash)."""
    text = "".join(json.dumps(m) + "\n" for m in history)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


def write_figures(vae: VAE, data: Dataset, history: list[dict], folder: Path,
                  seed: int = 0) -> list[Path]:
    """samples.png, reconstructions.png, curves.png (and latent.png when z_dim == 2)."""
    with forked_rng(vae.device), torch.no_grad():
        torch.manual_seed(seed)
        paths = [plots.plot_samples(vae, folder / "samples.png"),
                 plots.plot_reconstructions(vae, data.test_x, folder / "reconstructions.png"),
                 plots.plot_curves(history, folder / "curves.png")]
        if vae.z_dim == 2:
            paths.append(plots.plot_latent(vae, data.test_x, data.test_y,
                                           folder / "latent.png"))
    return paths


def save_checkpoint(path: Path, trainer: Trainer, config: TrainConfig) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "pyrovae": pyrovae.__version__,
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__},
        "config": config.to_dict(),
        "data_shape": list(trainer.vae.data_shape),
        "trainer": trainer.state_dict(),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, config: TrainConfig | None = None) -> dict:
    """Read and check a checkpoint; ``ValueError`` if it is damaged or does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: "
                         f"{error}); it is damaged or not a pyrovae checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyrovae checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {state.get('version')!r}; "
                         f"this pyrovae reads version {CHECKPOINT_VERSION}")
    if config is not None:
        # fields added since the checkpoint was written take their defaults
        saved = {**TrainConfig().to_dict(), **state["config"], "epochs": config.epochs,
                 "device": config.device, "dist_timeout": config.dist_timeout}
        current = config.to_dict()
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(f"checkpoint {path} was written for another config "
                             f"(differs in {', '.join(diff)})")
    return state


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[VAE, TrainConfig]:
    """The trained VAE of a run folder (last checkpoint) and its config; in eval mode.

    Loading the config imports the run's plug-ins (``config.plugin``) before its prior,
    likelihood and guide are looked up by name.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a pyrovae run folder (no config.json)")
    config = TrainConfig.load(run_dir / "config.json")
    if config.model != "vae":
        raise ValueError(f"{run_dir} holds a {config.model!r} run; load it with "
                         "pyrovae.cvae_runs.load_cvae_run")
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"run folder {run_dir} has no checkpoint.pt (did training start?)")
    state = load_checkpoint(checkpoint)
    vae = build_vae(config, tuple(state["data_shape"]))
    vae.load_state_dict(state["trainer"]["model"])
    return vae.to(resolve_device(device)).eval(), config
