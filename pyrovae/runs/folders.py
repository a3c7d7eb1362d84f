"""Run folders: their layout, atomic writes, the checks before a run starts, the record of
the environment.

A run folder holds::

    config.json        the TrainConfig, as written when the run started
    metrics.jsonl      one JSON line per epoch (epoch, train_elbo, test_elbo, seconds)
    checkpoint.pt      model, optimiser, RNG states, epoch, history, config (every epoch;
                       :mod:`pyrovae.runs.checkpoints`)
    figures/*.png      written by the run's job when training ends
    environment.json   versions of pyrovae, Pyro, torch, Python; the device
    evaluation.json    written by ``pyrovae evaluate``

and whatever else the model kind's job adds (``baseline.pt`` for a cvae). Every file is
written to a temporary file, flushed to disk and moved into place with ``os.replace``: a
run killed at any moment leaves the previous complete file.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import pyro
import torch

import pyrovae

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
    """``value`` as indented JSON at ``path``, atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history (drops lines past a crash)."""
    text = "".join(json.dumps(m) + "\n" for m in history)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


def default_run_dir(config) -> Path:
    """``runs/<time stamp>-<dataset>-<likelihood>-z<z_dim>`` for a config with no ``--out``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.likelihood}-z{config.z_dim}"


def check_new_run_dir(run_dir: Path, force: bool) -> None:
    """``ValueError`` unless ``run_dir`` can hold a new run (absent, empty, or ``force``)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise ValueError(f"run folder {run_dir} exists and is not empty; pass --resume to "
                         "continue it, --force to overwrite it, or another --out")


def prepare_run_dir(run_dir: Path, clear: bool) -> None:
    """Create ``run_dir``; with ``clear``, delete its run files and figures first. Removes
    the temporary files a run killed in the middle of a write left behind."""
    if clear:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for png in (run_dir / "figures").glob("*.png"):
            png.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    for torn in run_dir.glob(".*.tmp"):
        torn.unlink()


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
