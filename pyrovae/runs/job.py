"""Model kinds as jobs: the one place that knows what a kind of model needs.

A :class:`Job` is registered by name in :data:`JOBS` (``config.model`` picks it). It builds
its module and data from a config, says what it writes when training ends, how it is
evaluated and sampled, and how it is loaded back from a run folder. :func:`pyrovae.runs.train
.train_run`, ``pyrovae evaluate`` and ``pyrovae sample`` call these methods and never branch
on the kind; a new kind is one module with a ``Job`` subclass and one registration (imported
by :mod:`pyrovae.runs.jobs`).

Contract of a job instance (``job = job_class(config.model)(config, device)``):

    job.prepare(data)          build the module (on ``device``) and the training/test tensors
    job.module                 the model/guide pair the Trainer steps
    job.summary()              the model in a few words, for reports
    job.train_x, job.test_x    ``(N, *job.data_shape)`` tensors on ``device``
    job.finish(history, dir)   what is written when training ends (figures, baselines)
    job.upgrade_state(state)   an earlier version's model state_dict in today's keys
    job.load(run_dir)          the trained model of a run folder (what ``load_run`` returns)
    job.evaluate(run_dir, ...) a JSON-ready dict for ``evaluation.json``
    job.evaluation_figures(run_dir, result)  figures drawn from it, once it is saved
    job.sample(run_dir, ...)   write sample figures; returns a one-line summary
    job.test_pair(run_dir)     (model/guide pair, prepared test data) for check-kl, compare
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pyrovae.components.data import Dataset, binarize, dequantize, load_dataset
from pyrovae.components.logistic import on_the_grid
from pyrovae.components.registry import Registry

if TYPE_CHECKING:  # the config validates its model kind through JOBS
    from pyrovae.runs.config import TrainConfig

JOBS: Registry = Registry("model kind")
USER_MODEL = "MODULE:FACTORY"  # JOBS's entry for a user's Pyro model (pyrovae.runs.user_job)


def is_user_model(model: object) -> bool:
    """Whether ``model`` names a user's model, ``module:factory`` (or ``file.py:factory``)."""
    return isinstance(model, str) and ":" in model


def job_class(model: str) -> type[Job]:
    """The job of ``config.model``: a registered kind, or for ``module:factory`` the user-model
    job registered as :data:`USER_MODEL`; ``ValueError`` naming the kinds otherwise."""
    return JOBS.get(USER_MODEL if is_user_model(model) else model)


TEST_DEQUANTIZE_SEED = 2  # one dequantised test set for every run seed: runs compare


def prepare_data(config: TrainConfig, data: Dataset, device: torch.device,
                 check: Callable[[torch.Tensor], None] | None = None) -> Dataset:
    """Binarise (static) or dequantise, and ``check`` ``data`` (e.g. a likelihood's support
    check; the training images as the model sees them); move it to ``device``. The test set
    is binarised or dequantised once, with a fixed seed."""
    if config.dequantize:
        off = int((~on_the_grid(data.train_x)).sum()) + int((~on_the_grid(data.test_x)).sum())
        if off:
            raise ValueError(f"--dequantize needs 8-bit data (values k/255 in [0, 1]); "
                             f"{off} values of data set {config.dataset!r} are not")
        data.test_x = dequantize(data.test_x, seed=TEST_DEQUANTIZE_SEED)
    if config.binarize == "static":
        data.train_x = binarize(data.train_x, "static", seed=config.seed)
    if config.binarize != "none":
        data.test_x = binarize(data.test_x, "static", seed=config.seed + 1)
    # the model sees binary data under dynamic binarisation: check one draw of it
    seen = binarize(data.train_x, "static") if config.binarize == "dynamic" else \
        dequantize(data.train_x, seed=config.seed) if config.dequantize else data.train_x
    if check is not None:
        check(seen)
    return data.to(device)


def component_options(config: TrainConfig) -> dict:
    """The config's options for components built by name (each takes those it declares)."""
    return {"sigma": config.sigma, "components": config.components,
            "flow_steps": config.flow_steps, "logistic_components": config.logistic_components}


class Job:
    """Base class of a model kind (see the module docstring).

    Args:
        config: the run's validated :class:`~pyrovae.runs.config.TrainConfig`.
        device: where the module and data live.
    """

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.module = None
        self.data: Dataset | None = None
        self.train_x = self.test_x = None

    @classmethod
    def migrate_config(cls, values: dict) -> dict:
        """A config dict of an earlier version in today's fields (default: unchanged)."""
        return values

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """``ValueError`` if ``config`` (otherwise valid) does not suit this kind."""

    def summary(self) -> str:
        """The model in a few words, for reports."""
        c = self.config
        return f"{c.model}, {c.likelihood}, z_dim {c.z_dim}, hidden {c.hidden}"

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one datum the module takes (what the checkpoint records)."""
        return tuple(self.module.data_shape)

    def load_data(self) -> Dataset:
        """The config's data set as loaded from disk (not yet prepared)."""
        c = self.config
        return load_dataset(c.dataset, c.data_dir, download=False,
                            test_fraction=c.test_fraction, layout=c.layout)

    def prepare(self, data: Dataset) -> None:  # pragma: no cover - abstract
        """Set ``module`` (on ``device``), ``data``, ``train_x`` and ``test_x`` from ``data``."""
        raise NotImplementedError

    def finish(self, history: list[dict], run_dir: Path) -> None:
        """Write what the kind writes when training ends (figures, baselines)."""

    def upgrade_state(self, state: dict) -> dict:
        """A model ``state_dict`` from a checkpoint of an earlier version, in today's keys
        (default: unchanged)."""
        return state

    def load(self, run_dir: Path):  # pragma: no cover - abstract
        """The trained model of ``run_dir`` (last checkpoint) on ``device``, in eval mode."""
        raise NotImplementedError

    def evaluate(self, run_dir: Path, batch_size: int = 1000, nll_samples: int = 0,
                 chunk: int = 500, limit: int | None = None, seed: int = 0,
                 ctx=None) -> dict:  # pragma: no cover - abstract
        """The evaluation of ``run_dir`` as a JSON-ready dict (``ctx``: the ranks)."""
        raise NotImplementedError

    def evaluation_figures(self, run_dir: Path, result: dict) -> list[Path]:
        """Figures drawn from :meth:`evaluate`'s result, written after it is saved (default:
        none)."""
        return []

    def sample(self, run_dir: Path, n: int | None = None, out: Path | None = None,
               seed: int = 0, **options) -> str:  # pragma: no cover - abstract
        """Write samples of the trained model; return a one-line summary."""
        raise NotImplementedError

    def test_pair(self, run_dir: Path):  # pragma: no cover - abstract
        """(the trained model/guide pair, its prepared test data) for check-kl and compare."""
        raise NotImplementedError


def check_limit(limit: int | None, available: int) -> None:
    """``ValueError`` unless ``limit`` is None or in [1, available]."""
    if limit is not None and not 1 <= limit <= available:
        raise ValueError(f"--limit must be in [1, {available}] (the test set), got {limit}")

