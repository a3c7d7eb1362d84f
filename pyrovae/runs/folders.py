"""Run folders: their layout, atomic writes, the checks before a run starts, the record of
the environment.

A run folder holds::

    config.json        the TrainConfig, as written when the run started
    metrics.jsonl      one JSON line per epoch (epoch, train_elbo, test_elbo, seconds)
    checkpoint.pt      model, optimiser, RNG states, epoch, history, config (every epoch;
                       :mod:`pyrovae.runs.checkpoints`)
    figures/*.png      written by the run's job when training ends
    tensorboard/       TensorBoard events, when the package is installed
                       (:mod:`pyrovae.runs.tensorboard`)
    environment.json   versions of pyrovae, Pyro, torch, Python; the device (and, under
                       ``earlier``, those of the sessions before a ``--resume``)
    evaluation.json    written by ``pyrovae evaluate``
    .pyrovae.lock      locked by the process that trains in the folder (:func:`locked_run_dir`)

and whatever else the model kind's job adds (``baseline.pt`` for a cvae). Every file is
written to a temporary file, flushed to disk and moved into place with ``os.replace``: a
run killed at any moment leaves the previous complete file.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.components.machine import cpu_model

try:  # POSIX: the run-folder lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".pyrovae.lock"  # held by the process training in the folder
REPLACED = ".replaced"  # the run that --force replaces, until the new one's first checkpoint
RUN_FOLDERS = ("figures", "tensorboard")  # written by a run too
RUN_FILES = ("config.json", "environment.json", "metrics.jsonl", "checkpoint.pt",
             "evaluation.json", "baseline.pt")


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename.

    The temporary file's name carries the writer's process id: one left by a process that
    was killed (``SIGKILL`` cannot be caught) is removed by the next write of the same file.
    An ``OSError`` (disk full, read-only folder) names ``path``; the old file stays whole."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_torn(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    except OSError as error:
        raise _naming(error, path) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(error, path) from error
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file name (an fsync's ENOSPC names no file)."""
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def remove_torn(folder: Path, name: str | None = None) -> None:
    """Remove the temporary files of :func:`atomic_write` (of the file ``name``, or of any)
    in ``folder`` whose writer is no longer running; a live writer's file is left alone."""
    for torn in Path(folder).glob(f".{glob.escape(name) if name else '*'}.*.tmp"):
        if not _writer_alive(torn.name):
            torn.unlink(missing_ok=True)


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process whose id is in ``.NAME.PID.RANDOM.tmp`` runs on this machine (a
    name of the older form, without a process id, counts as dead; a process we may not
    signal counts as alive)."""
    parts = tmp_name[:-len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass
    return True


def json_safe(value):
    """``value`` with every NaN or infinite float replaced by ``None``: JSON has no NaN (a
    bare ``NaN`` makes the file unreadable to strict parsers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(value, indent: int | None = None) -> str:
    """Strict JSON of ``value`` (non-finite floats as ``null``)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: Path, value) -> None:
    """``value`` as indented, strict JSON at ``path``, atomically."""
    atomic_write(path, lambda f: f.write((to_json(value, indent=2) + "\n").encode()))


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the checkpoint's history: epoch lines written after the
    last checkpoint by a run that crashed go; event lines (a ``non_finite`` stop: they have
    an ``event`` field) stay, each before the epoch whose attempt it records."""
    events = [e for e in read_jsonl(run_dir / "metrics.jsonl") if "event" in e]
    lines = sorted([*events, *history],
                   key=lambda m: (m.get("epoch", 0), 0 if "event" in m else 1))
    text = "".join(to_json(m) + "\n" for m in lines)
    atomic_write(run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per line (``[]`` if there is no file; a
    torn last line, as a kill mid-write leaves, is skipped)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_epochs(path: Path) -> list[dict]:
    """The epoch entries of a ``metrics.jsonl`` (its event lines left out)."""
    return [m for m in read_jsonl(path)
            if "event" not in m and isinstance(m.get("epoch"), int)]


def default_run_dir(config) -> Path:
    """``runs/<time stamp>-<dataset>-<likelihood>-z<z_dim>`` for a config with no ``--out``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{config.dataset}-{config.likelihood}-z{config.z_dim}"


def check_new_run_dir(run_dir: Path, force: bool) -> bool:
    """``ValueError`` unless ``run_dir`` can hold a new run: absent or empty (but for its
    lock); half-made (pyrovae's files without a checkpoint: a start killed or refused
    before its first epoch ended); or, with ``force``, a pyrovae run folder (it has a
    ``config.json``; a folder of other files is never cleared). Returns whether the old run
    files must be replaced."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    contents = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
    if not contents:
        return False
    ours = all(p.name in RUN_FILES or p.name in RUN_FOLDERS or _is_torn(p) for p in contents)
    if ours and not (run_dir / "checkpoint.pt").exists():
        return True  # half-made: nothing trained to lose
    if not force:
        raise ValueError(f"run folder {run_dir} exists and is not empty; pass --resume to "
                         "continue it, --force to overwrite it, or another --out")
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"--force: {run_dir} is not a pyrovae run folder (no config.json); "
                         "pyrovae deletes only run folders it wrote: pick another --out")
    return True


def _is_torn(path: Path) -> bool:
    """A temporary file of an interrupted :func:`atomic_write`."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def set_aside_run(run_dir: Path) -> Path:
    """Move ``run_dir``'s run files and figures into ``run_dir/.replaced`` (the folder a new
    run replaces, kept until :func:`drop_set_aside` or put back by :func:`put_back`)."""
    aside = run_dir / REPLACED
    aside.mkdir()  # recover_set_aside has dealt with any earlier one
    for name in (*RUN_FILES, *RUN_FOLDERS):
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)
    return aside


def put_back(run_dir: Path, aside: Path) -> None:
    """Undo :func:`set_aside_run`: the new run's files go, the old ones come back."""
    for name in (*RUN_FILES, *RUN_FOLDERS):
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
        (run_dir / name).unlink(missing_ok=True)
        if (aside / name).exists():
            os.replace(aside / name, run_dir / name)
    shutil.rmtree(aside)


def recover_set_aside(run_dir: Path) -> None:
    """Finish what a killed ``--force`` run left: its new checkpoint exists, so the old run
    set aside goes; or it does not, so the old run comes back."""
    aside = Path(run_dir) / REPLACED
    if not aside.is_dir():
        return
    if (Path(run_dir) / "checkpoint.pt").is_file():
        drop_set_aside(aside)
    else:
        put_back(Path(run_dir), aside)


def wait_for_recovery(run_dir: Path, timeout_s: float) -> None:
    """Wait until no set-aside run is left in ``run_dir``: under torchrun the other ranks
    read the folder only once rank 0's :func:`recover_set_aside` has finished. (Rank 0
    sets a run aside again only after every rank has checked the folder.)"""
    deadline = time.monotonic() + timeout_s
    while (Path(run_dir) / REPLACED).exists():
        if time.monotonic() > deadline:
            raise ValueError(f"{run_dir / REPLACED} is still there after {timeout_s:g} s: "
                             "rank 0 did not recover the run that --force set aside")
        time.sleep(0.05)


def drop_set_aside(aside: Path) -> None:
    """The new run has its first checkpoint: the old one set aside goes."""
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path):
    """Hold the run folder's lock (an exclusive ``flock`` on ``RUN_DIR/.pyrovae.lock``) for
    the block: a second training process on the same folder gets a ``ValueError`` naming
    the holder instead of interleaving its files with the first's. Creates the folder; one
    that only this block created and that holds nothing but the lock afterwards (a start
    refused by a check) is removed again. The kernel drops the lock when the process dies.
    (Where ``fcntl`` is missing, e.g. on Windows, no lock is taken.)"""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a folder")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ValueError(f"run folder {run_dir} is in use by another pyrovae process "
                                 f"({holder}); wait until it ends, or pick another --out"
                                 ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}, since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        yield run_dir
    finally:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()
        handle.close()  # releases the lock


def prepare_run_dir(run_dir: Path) -> None:
    """Create ``run_dir``; remove the temporary files a process killed in the middle of a
    write left behind."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_torn(run_dir)


def environment(device: torch.device, world_size: int = 1) -> dict:
    """Versions and device of a run, for the record (``world_size``: ranks training)."""
    return {
        "pyrovae": pyrovae.__version__, "pyro": pyro.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def environment_with_history(run_dir: Path, current: dict) -> dict:
    """``current`` (an :func:`environment`) with the run's earlier sessions under
    ``earlier`` (oldest first), read from ``run_dir/environment.json``: a resumed run keeps
    the record of every machine and version that trained it."""
    try:
        old = json.loads((Path(run_dir) / "environment.json").read_text())
    except (OSError, ValueError):
        return current
    if not isinstance(old, dict):
        return current
    earlier = old.pop("earlier", [])
    return {**current, "earlier": [*(earlier if isinstance(earlier, list) else []), old]}
