"""Checkpoints: one format for every model kind, written atomically, checked on load.

A checkpoint (``checkpoint.pt``) is a ``torch.save`` of a dict::

    format      "pyrovae-checkpoint"
    version     CHECKPOINT_VERSION (2; a reader also reads version 1, refuses others)
    sha256      the SHA-256 of ``payload``, checked before it is unpickled
    payload     the bytes of a ``torch.save`` of:
        pyrovae     the version that wrote it; versions: Pyro's and torch's
        config      the run's TrainConfig as a dict
        data_shape  the shape of one datum the model was built for
        trainer     Trainer.state_dict(): model, optimiser, RNG states, epoch, history

so that resuming gives the same numbers as not stopping, and damaged bytes anywhere in the
state (a tensor's values included) are refused instead of loaded. Version 1 (earlier
pyrovae) held the payload's fields at the top level, without a checksum.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.runs.config import TrainConfig, migrate
from pyrovae.runs.folders import atomic_write

CHECKPOINT_FORMAT = "pyrovae-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
RESUME_FIELDS = ("epochs", "device", "dist_timeout")  # may change when a run is resumed


def save_checkpoint(path: Path, trainer, config: TrainConfig,
                    data_shape: tuple[int, ...]) -> None:
    """Write ``trainer``'s state with ``config`` and ``data_shape`` to ``path``, atomically."""
    payload = {
        "pyrovae": pyrovae.__version__,
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__},
        "config": config.to_dict(),
        "data_shape": list(data_shape),
        "trainer": trainer.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
             "sha256": hashlib.sha256(data).hexdigest(), "payload": data}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, config: TrainConfig | None = None) -> dict:
    """Read and check a checkpoint (its checksum, then its contents); ``ValueError`` if it is
    damaged or, given ``config``, was written for another one (the fields of
    :data:`RESUME_FIELDS` aside). Returns the payload's fields with ``format`` and
    ``version``."""
    state = _read(path, lambda f: torch.load(f, map_location="cpu", weights_only=False))
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyrovae checkpoint")
    if state.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"checkpoint {path} has format version {state.get('version')!r}; "
                         f"this pyrovae reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    if state["version"] >= 2:
        data = state.get("payload")
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != state.get("sha256"):
            raise ValueError(f"checkpoint {path} cannot be read (its contents do not match "
                             "their SHA-256 checksum); it is damaged: train anew, or restore "
                             "a copy")
        payload = _read(path, lambda _: torch.load(io.BytesIO(data), map_location="cpu",
                                                    weights_only=False))
        state = {"format": state["format"], "version": state["version"], **payload}
    if config is not None:
        # fields added since the checkpoint was written take their defaults
        saved = {**TrainConfig().to_dict(), **migrate(state["config"]),
                 **{k: getattr(config, k) for k in RESUME_FIELDS}}
        current = config.to_dict()
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ConfigMismatch(path, diff)
    return state


class ConfigMismatch(ValueError):
    """A checkpoint checked against a config it was not trained with; ``fields`` differ."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = Path(path), list(fields)
        super().__init__(f"checkpoint {path} was written for another config (differs in "
                         f"{', '.join(fields)})")

    def edited(self) -> ValueError:
        """The error to show when the config came from the run folder's ``config.json``."""
        return ValueError(f"{self.path.parent / 'config.json'} differs from the config its "
                          f"checkpoint was trained with (in {', '.join(self.fields)}); was it "
                          "edited? Restore it, or train a new run with the new settings")


def _read(path: Path, load):
    """``load(path)``; a ``ValueError`` naming the file when it is not a readable torch file."""
    try:
        return load(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path} cannot be read ({type(error).__name__}: "
                         f"{error}); it is damaged or not a pyrovae checkpoint") from None


def model_state(run_dir: Path) -> tuple[dict, tuple[int, ...]]:
    """The model's ``state_dict`` in a run folder's last checkpoint, and its data shape: the
    averaged weights for a run trained with ``--ema-decay``, else the trained ones."""
    checkpoint = Path(run_dir) / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ValueError(f"run folder {run_dir} has no checkpoint.pt (did training start?)")
    state = load_checkpoint(checkpoint)
    trainer = state["trainer"]
    return trainer.get("averaged_model", trainer["model"]), tuple(state["data_shape"])
