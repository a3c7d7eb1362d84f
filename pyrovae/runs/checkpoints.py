"""Checkpoints: one format for every model kind, written atomically, checked on load.

A checkpoint (``checkpoint.pt``) is a ``torch.save`` of a dict::

    format      "pyrovae-checkpoint"
    version     CHECKPOINT_VERSION (a reader refuses any other)
    pyrovae     the version that wrote it; versions: Pyro's and torch's
    config      the run's TrainConfig as a dict
    data_shape  the shape of one datum the model was built for
    trainer     Trainer.state_dict(): model, optimiser, RNG states, epoch, history

so that resuming gives the same numbers as not stopping.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.runs.config import TrainConfig, migrate
from pyrovae.runs.folders import atomic_write

CHECKPOINT_FORMAT = "pyrovae-checkpoint"
CHECKPOINT_VERSION = 1
RESUME_FIELDS = ("epochs", "device", "dist_timeout")  # may change when a run is resumed


def save_checkpoint(path: Path, trainer, config: TrainConfig,
                    data_shape: tuple[int, ...]) -> None:
    """Write ``trainer``'s state with ``config`` and ``data_shape`` to ``path``, atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "pyrovae": pyrovae.__version__,
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__},
        "config": config.to_dict(),
        "data_shape": list(data_shape),
        "trainer": trainer.state_dict(),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, config: TrainConfig | None = None) -> dict:
    """Read and check a checkpoint; ``ValueError`` if it is damaged or, given ``config``, was
    written for another one (the fields of :data:`RESUME_FIELDS` aside)."""
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
        saved = {**TrainConfig().to_dict(), **migrate(state["config"]),
                 **{k: getattr(config, k) for k in RESUME_FIELDS}}
        current = config.to_dict()
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(f"checkpoint {path} was written for another config "
                             f"(differs in {', '.join(diff)})")
    return state


def model_state(run_dir: Path) -> tuple[dict, tuple[int, ...]]:
    """The model's ``state_dict`` in a run folder's last checkpoint, and its data shape."""
    checkpoint = Path(run_dir) / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"run folder {run_dir} has no checkpoint.pt (did training start?)")
    state = load_checkpoint(checkpoint)
    return state["trainer"]["model"], tuple(state["data_shape"])
