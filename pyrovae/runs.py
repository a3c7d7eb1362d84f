"""Run folders: train a config into a folder, checkpoint atomically, resume, load back.

A run folder holds::

    config.json        the TrainConfig, as written when the run started
    metrics.jsonl      one JSON line per epoch (epoch, train_elbo, test_elbo, seconds)
    checkpoint.pt      model, optimiser, RNG states, epoch, history, config (every epoch)
    figures/*.png      samples, reconstructions, curves (and latent when z_dim == 2)
    evaluation.json    written by ``pyrovae evaluate``

Checkpoints are written to a temporary file, flushed to disk and moved into place with
``os.replace``: a run killed at any moment leaves the previous complete checkpoint.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import plots
from pyrovae.config import TrainConfig
from pyrovae.data import Dataset, binarize, check_batch_size, load_dataset
from pyrovae.likelihoods import build_likelihood
from pyrovae.model import VAE
from pyrovae.training import NonFiniteLossError, Trainer, resolve_device

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "pyrovae-checkpoint"
CHECKPOINT_VERSION = 1
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "evaluation.json")


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
    """The VAE a config describes (prior, likelihood, networks), on the CPU."""
    likelihood = build_likelihood(config.likelihood, sigma=config.sigma)
    return VAE(data_shape, z_dim=config.z_dim, hidden=config.hidden,
               activation=config.activation, prior=config.prior, likelihood=likelihood)


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


def train_run(config: TrainConfig, out: str | Path | None = None, resume: bool = False,
              force: bool = False, progress: bool | None = None) -> Path:
    """Train ``config`` into the run folder ``out`` and return the folder.

    ``resume`` continues from ``out/checkpoint.pt`` with the saved config (``epochs`` taken
    from ``config``), reproducing on the CPU the numbers of an uninterrupted run. An existing
    run folder is refused unless ``resume`` or ``force`` (which deletes its run files).
    """
    config.validate()
    run_dir = Path(out) if out is not None else default_run_dir(config)
    checkpoint = run_dir / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise ValueError(f"--resume: no checkpoint at {checkpoint}; start a new run "
                             "without --resume")
        saved = TrainConfig.load(run_dir / "config.json")
        saved.epochs, saved.device = config.epochs, config.device
        config = saved.validate()
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise ValueError(f"run folder {run_dir} exists and is not empty; pass --resume to "
                             "continue it, --force to overwrite it, or another --out")
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for png in (run_dir / "figures").glob("*.png"):
            png.unlink()

    device = resolve_device(config.device)
    pyro.set_rng_seed(config.seed)
    data = load_dataset(config.dataset, config.data_dir, config.download)
    vae = build_vae(config, data.image_shape)
    data = prepare_data(config, vae, data, device)
    check_batch_size(config.batch_size, len(data.train_x))
    vae.to(device)
    trainer = Trainer(vae, config.elbo, lr=config.lr, clip_norm=config.clip_norm,
                      stepper=config.stepper, particles=config.particles,
                      compile=config.compile, on_nan=config.on_nan)
    if resume:
        trainer.load_state_dict(load_checkpoint(checkpoint, config)["trainer"])
        logger.info("resumed %s at epoch %d", run_dir, trainer.epoch)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    _write_metrics(run_dir, trainer.history)

    def on_epoch_end(trainer: Trainer, metrics: dict) -> None:
        save_checkpoint(checkpoint, trainer, config)
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    try:
        trainer.fit(data.train_x, config.epochs, config.batch_size, test_x=data.test_x,
                    dynamic_binarize=config.binarize == "dynamic", on_epoch_end=on_epoch_end,
                    progress=progress)
    except NonFiniteLossError as error:
        event = {"event": "non_finite", "epoch": error.epoch, "step": error.step,
                 "bad_steps": error.bad_steps, "steps": error.steps, "action": "stopped"}
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(event) + "\n")
        raise
    write_figures(vae, data, trainer.history, run_dir / "figures", seed=config.seed)
    return run_dir


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (drops lines past a crash)."""
    text = "".join(json.dumps(m) + "\n" for m in history)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


def write_figures(vae: VAE, data: Dataset, history: list[dict], folder: Path,
                  seed: int = 0) -> list[Path]:
    """samples.png, reconstructions.png, curves.png (and latent.png when z_dim == 2)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
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
        saved = dict(state["config"], epochs=config.epochs, device=config.device)
        if saved != config.to_dict():
            diff = sorted(k for k in saved if saved[k] != config.to_dict().get(k))
            raise ValueError(f"checkpoint {path} was written for another config "
                             f"(differs in {', '.join(diff)})")
    return state


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[VAE, TrainConfig]:
    """The trained VAE of a run folder (last checkpoint) and its config; in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a pyrovae run folder (no config.json)")
    config = TrainConfig.load(run_dir / "config.json")
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"run folder {run_dir} has no checkpoint.pt (did training start?)")
    state = load_checkpoint(checkpoint)
    vae = build_vae(config, tuple(state["data_shape"]))
    vae.load_state_dict(state["trainer"]["model"])
    return vae.to(resolve_device(device)).eval(), config
