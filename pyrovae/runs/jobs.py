"""Every registered model kind, imported in one place, and what uses them by name.

Importing this module registers the ``vae`` (:mod:`pyrovae.runs.vae_job`), ``cvae``
(:mod:`pyrovae.runs.cvae_job`), ``hvae`` (:mod:`pyrovae.runs.hvae_job`) and user-model
(``module:factory``, :mod:`pyrovae.runs.user_job`) jobs in :data:`~pyrovae.runs.job.JOBS`.
:func:`job_for_run` finds the job of a run folder from its ``config.json``; :func:`load_run`
loads any kind.
"""

from __future__ import annotations

from pathlib import Path

from pyrovae.runs import cvae_job, hvae_job, user_job, vae_job  # noqa: F401  (register kinds)
from pyrovae.runs.checkpoints import ConfigMismatch, load_checkpoint
from pyrovae.runs.config import TrainConfig, load_config
from pyrovae.runs.job import Job, job_class
from pyrovae.training.trainer import resolve_device


def job_for(config: TrainConfig, device="cpu") -> Job:
    """The job of ``config.model`` for ``config`` on ``device``."""
    return job_class(config.model)(config, resolve_device(device))


def job_for_run(run_dir: str | Path, device="cpu") -> Job:
    """The job of the run folder ``run_dir`` (its config loaded, plug-ins imported).

    The checkpoint's own config is what trained the model: a ``config.json`` that differs
    from it (a hand edit; ``epochs``, ``device`` and ``dist_timeout`` aside) is refused, so
    ``evaluate`` and ``sample`` never rebuild the model from settings it was not trained
    with."""
    config = load_config(run_dir)
    checkpoint = Path(run_dir) / "checkpoint.pt"
    if checkpoint.is_file():
        try:
            load_checkpoint(checkpoint, config)
        except ConfigMismatch as error:
            raise error.edited() from None
    return job_for(config, device)


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[object, TrainConfig]:
    """The trained model of a run folder of any kind (last checkpoint, eval mode) and its
    config: a :class:`~pyrovae.models.vae.VAE` for a ``vae`` run, a
    :class:`~pyrovae.runs.cvae_job.CVAERun` (CVAE and baseline) for a ``cvae`` run.

    Loading the config imports the run's plug-ins (``config.plugin``) before its prior,
    likelihood and guide are looked up by name.
    """
    job = job_for_run(run_dir, device)
    return job.load(Path(run_dir)), job.config
