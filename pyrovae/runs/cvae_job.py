"""Conditional-VAE run folders: the data, the baseline, the figures, loading and evaluation.

:func:`pyrovae.runs.train.train_run` trains a ``model="cvae"`` config through :class:`CVAEJob`
(checkpoints, resume and metrics are every kind's), which adds to the run folder::

    baseline.pt              the deterministic Regressor, trained after the CVAE on the
                             same data, batches and likelihood (its state, its per-epoch
                             training NLL, its training seconds)
    figures/completions.png  per test input: X, the truth, the baseline's mean, CVAE draws
    figures/by_label.png     (condition ``label``) CVAE draws for each class

``pyrovae evaluate`` on such a folder (:func:`evaluate_cvae_run`) writes the conditional test
ELBO, the conditional NLL -log P(Y|X) of the CVAE (importance-sampled from Q(z|X, Y), the
IWAE-k bound of :func:`pyrovae.inference.evaluation.log_likelihood`) and the baseline's exact one,
with standard errors and their paired difference, into ``evaluation.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyro
import torch

from pyrovae.components.data import Dataset
from pyrovae.components.likelihoods import build_likelihood
from pyrovae.components.rng import forked_rng
from pyrovae.components.validation import check_int
from pyrovae.inference.evaluation import evaluate_elbo, nll_report
from pyrovae.inference.statistics import standard_error
from pyrovae.models.conditional_conv import ConditionalConvDecoder, ConditionalConvEncoder
from pyrovae.models.conditioning import Condition, build_condition, pack
from pyrovae.models.cvae import CVAE, PackedCVAE, Regressor, regressor_nll
from pyrovae.runs import plots
from pyrovae.runs.checkpoints import model_state
from pyrovae.runs.config import TrainConfig, load_config
from pyrovae.runs.folders import atomic_write
from pyrovae.runs.job import JOBS, Job, check_limit, component_options, prepare_data
from pyrovae.training import distributed
from pyrovae.training.callbacks import NllProgress
from pyrovae.training.trainer import Trainer, resolve_device

BASELINE_FILE = "baseline.pt"
ROWS = 8    # test inputs in completions.png
DRAWS = 6   # CVAE draws per input in the run's figures
MAX_DRAWS = 100  # draws per input, and inputs, in one figure of `pyrovae sample`


def build_cvae(config: TrainConfig, condition: Condition) -> CVAE:
    """The CVAE a ``model="cvae"`` config describes, for ``condition``, on the CPU: any
    registered prior (P(z|X)), guide (Q(z|X, Y)) and likelihood, with the config's options;
    with ``network="conv"``, the encoder and decoder convolve the image around X and Y
    (:mod:`pyrovae.models.conditional_conv`)."""
    likelihood = build_likelihood(config.likelihood, **component_options(config))
    networks = {}
    if config.network == "conv":
        networks = {
            "encoder": ConditionalConvEncoder(condition, config.channels, config.hidden,
                                              config.z_dim, config.activation),
            "decoder": ConditionalConvDecoder(config.z_dim + condition.x_dim, condition,
                                              config.channels, config.hidden,
                                              likelihood.params_per_value, config.activation)}
    return CVAE(condition.x_dim, condition.y_dim, z_dim=config.z_dim, hidden=config.hidden,
                activation=config.activation, likelihood=likelihood,
                prior=config.prior, guide=config.guide, **networks,
                **component_options(config))


def build_regressor(config: TrainConfig, condition: Condition) -> Regressor:
    """The baseline of a ``model="cvae"`` config: the CVAE decoder's widths (its conv
    decoder with ``network="conv"``) on X alone."""
    likelihood = build_likelihood(config.likelihood, **component_options(config))
    net = None if config.network != "conv" else ConditionalConvDecoder(
        condition.x_dim, condition, config.channels, config.hidden,
        likelihood.params_per_value, config.activation)
    return Regressor(condition.x_dim, condition.y_dim, hidden=config.hidden,
                     activation=config.activation, likelihood=likelihood, net=net)


@dataclass
class CVAERun:
    """A trained CVAE run: the CVAE, its baseline, the task, the config."""

    cvae: CVAE
    regressor: Regressor
    condition: Condition
    config: TrainConfig

    @property
    def device(self) -> torch.device:
        return next(self.cvae.parameters()).device


def load_cvae_run(run_dir: str | Path, device: str = "cpu") -> CVAERun:
    """The trained CVAE (last checkpoint) and baseline of a ``model="cvae"`` run folder."""
    config = load_config(run_dir)
    if config.model != "cvae":
        raise ValueError(f"{run_dir} holds a {config.model!r} run, not a cvae run")
    return CVAEJob(config, resolve_device(device)).load(run_dir)


def load_cvae_data(run: CVAERun) -> Dataset:
    """The run's data set, binarised as in training, on the run's device."""
    data = CVAEJob(run.config).load_data()
    return prepare_data(run.config, data, run.device, run.cvae.likelihood.check)


@JOBS.register("cvae")
class CVAEJob(Job):
    """The conditional VAE P(Y|X) of ``config.condition``, with its deterministic baseline.

    After :meth:`prepare`: ``module`` is the :class:`~pyrovae.models.cvae.PackedCVAE` the
    trainer steps; ``train_x``, ``test_x`` packed ``(N, 1, 1, x_dim + y_dim)`` data on
    ``device``, binarised as the config asks (static test set; dynamic draws happen per
    batch); ``data`` the prepared images and labels on ``device`` (for the figures).
    """

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        if config.dequantize:
            raise ValueError("--dequantize is for the vae and hvae kinds (the cvae's bits/dim "
                             "carry no log 256 correction)")

    def prepare(self, data: Dataset) -> None:
        config = self.config
        self.condition = build_condition(config.condition, data.image_shape)
        self.cvae = build_cvae(config, self.condition).to(self.device)
        self.module = PackedCVAE(self.cvae)
        self.data = prepare_data(config, data, self.device, self.module.likelihood.check)
        self.train_x = pack(*self.condition.split(self.data.train_x, self.data.train_y))
        self.test_x = pack(*self.condition.split(self.data.test_x, self.data.test_y))

    def finish(self, history: list[dict], run_dir: Path) -> None:
        """After training: fit and save the baseline, then write the figures.

        The regressor's initial weights come from the RNG state the CVAE's training left
        (restored on resume, so a resumed run gets the same baseline); its batches and
        binarisation draws from ``seed``.
        """
        config = self.config
        regressor = build_regressor(config, self.condition).to(self.train_x.device)
        with forked_rng(self.train_x):
            torch.manual_seed(config.seed)
            start = time.perf_counter()
            trainer = Trainer(PackedCVAE(regressor), "trace", lr=config.lr)
            history = trainer.fit(self.train_x, config.epochs, config.batch_size,
                                  dynamic_binarize=config.binarize == "dynamic",
                                  progress=False)
            losses = [-epoch["train_elbo"] for epoch in history]  # exact NLL, no latent
            seconds = time.perf_counter() - start
        state = {"model": regressor.state_dict(), "image_shape": list(self.condition.image_shape),
                 "train_nll": losses, "seconds": seconds}
        atomic_write(run_dir / BASELINE_FILE, lambda f: torch.save(state, f))
        run = CVAERun(self.cvae.eval(), regressor.eval(), self.condition, config)
        write_cvae_figures(run, self.data.test_x, self.data.test_y, run_dir / "figures",
                           seed=config.seed)
        plots.plot_curves(history, run_dir / "figures" / "curves.png")

    @classmethod
    def migrate_config(cls, values: dict) -> dict:
        """Before every prior served the CVAE, ``cvae_prior`` chose P(z|X): ``fixed`` (or
        unset) is today's ``standard_normal`` prior, ``learned`` its ``conditional_normal``."""
        if "cvae_prior" in values:
            values = dict(values)
            old = values.pop("cvae_prior")
            values["prior"] = {None: "standard_normal", "fixed": "standard_normal",
                               "learned": "conditional_normal"}.get(old, old)
        return values

    def upgrade_state(self, state: dict) -> dict:
        """Before the CVAE was a VAE with a context, its fixed prior N(0, I) kept its buffers
        in ``prior.base``; the learned prior's network is today's ``conditional_normal``."""
        return {key.replace("cvae.prior.base.", "cvae.prior."): value
                for key, value in state.items()}

    def load(self, run_dir: Path) -> CVAERun:
        """The trained CVAE (last checkpoint) and baseline of the run folder."""
        run_dir = Path(run_dir)
        if not (run_dir / BASELINE_FILE).is_file():
            raise ValueError(f"cvae run {run_dir} has no {BASELINE_FILE}: training did not "
                             f"finish (continue it with pyrovae train --resume --out "
                             f"{run_dir})")
        baseline = torch.load(run_dir / BASELINE_FILE, map_location="cpu", weights_only=False)
        condition = build_condition(self.config.condition, baseline["image_shape"])
        cvae = build_cvae(self.config, condition)
        PackedCVAE(cvae).load_state_dict(self.upgrade_state(model_state(run_dir)[0]))
        regressor = build_regressor(self.config, condition)
        regressor.load_state_dict(baseline["model"])
        return CVAERun(cvae.to(self.device).eval(), regressor.to(self.device).eval(),
                       condition, self.config)

    def test_pair(self, run_dir: Path) -> tuple[PackedCVAE, torch.Tensor]:
        run = self.load(run_dir)
        data = load_cvae_data(run)
        return PackedCVAE(run.cvae), pack(*run.condition.split(data.test_x, data.test_y))

    def evaluate(self, run_dir: Path, batch_size: int = 1000, nll_samples: int = 0,
                 chunk: int = 500, limit: int | None = None, seed: int = 0,
                 ctx=distributed.SINGLE) -> dict:
        """:func:`evaluate_cvae_run` on the first ``limit`` test inputs (one process)."""
        if ctx.enabled:
            raise ValueError("evaluate a cvae run in one process (not under torchrun)")
        run = self.load(run_dir)
        data = load_cvae_data(run)
        check_limit(limit, len(data.test_x))
        test_x = pack(*run.condition.split(data.test_x[:limit], data.test_y[:limit]))
        return evaluate_cvae_run(run, test_x, batch_size, nll_samples, chunk, seed)

    def sample(self, run_dir: Path, n: int | None = None, out: Path | None = None,
               seed: int = 0, given: str | None = None, rows: int | None = None) -> str:
        """``n`` (default 6) CVAE draws for each of the first ``rows`` (default 8) inputs of
        the ``given`` split (default test) into the folder ``out`` (default
        ``RUN_DIR/figures``)."""
        draws = DRAWS if n is None else check_int(n, "-n", maximum=MAX_DRAWS)
        check_int(ROWS if rows is None else rows, "--rows", maximum=MAX_DRAWS)
        if out is not None and out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} must be a folder for a cvae run (it writes "
                             "completions.png there)")
        run = self.load(run_dir)
        data = load_cvae_data(run)
        images, labels = (data.test_x, data.test_y) if given in (None, "test") \
            else (data.train_x, data.train_y)
        folder = out or Path(run_dir) / "figures"
        paths = write_cvae_figures(run, images, labels, folder, draws=draws,
                                   rows=ROWS if rows is None else rows, seed=seed)
        return f"wrote {draws} CVAE draws per input to {', '.join(map(str, paths))}"


@torch.no_grad()
def write_cvae_figures(run: CVAERun, images: torch.Tensor, labels: torch.Tensor,
                       folder: Path, draws: int = DRAWS, rows: int = ROWS,
                       seed: int = 0) -> list[Path]:
    """``completions.png`` for the first ``rows`` of ``images``/``labels`` with ``draws``
    CVAE draws each, and ``by_label.png`` (``draws`` per class) for the ``label`` task."""
    check_int(draws, "draws")
    check_int(rows, "rows")
    with forked_rng(images):
        torch.manual_seed(seed)
        paths = [plot_completions(run, images[:rows], labels[:rows], draws,
                                  folder / "completions.png")]
        if run.condition.name == "label":
            classes = torch.arange(run.condition.classes, device=images.device)
            paths.append(plot_by_label(run, classes, draws, folder / "by_label.png"))
    return paths


def plot_completions(run: CVAERun, images: torch.Tensor, labels: torch.Tensor, draws: int,
                     path: Path) -> Path:
    """One row per input: X, the truth, the baseline's mean, ``draws`` CVAE draws (decoder
    means at z ~ P(z|X)), each pasted into the observed pixels unchanged."""
    condition = run.condition
    x, _ = condition.split(images, labels)
    baseline = condition.complete(images, run.regressor.predict(x))
    samples = condition.complete(images, run.cvae.predict(x, draws))
    columns = [("X (given)", condition.show_input(images)), ("truth", images),
               ("baseline", baseline), (f"CVAE: {draws} draws of z ~ P(z|X)", samples)]
    row_labels = [str(int(k)) for k in labels] if condition.name == "label" else None
    return plots.plot_image_table(columns, path, f"{condition.name} task: the regressor's "
                                  "mean vs the CVAE's draws", row_labels)


def plot_by_label(run: CVAERun, classes: torch.Tensor, draws: int, path: Path) -> Path:
    """One row per class: the baseline's mean image, then ``draws`` CVAE draws."""
    condition = run.condition
    blank = torch.zeros(len(classes), *condition.image_shape, device=classes.device)
    x, _ = condition.split(blank, classes)
    columns = [("baseline", condition.complete(blank, run.regressor.predict(x))),
               (f"CVAE: {draws} draws per class", condition.complete(blank,
                                                                      run.cvae.predict(x, draws)))]
    return plots.plot_image_table(columns, path, "class-conditional generation",
                                  [str(int(k)) for k in classes])


def evaluate_cvae_run(run: CVAERun, test_x: torch.Tensor, batch_size: int = 1000,
                      nll_samples: int = 0, chunk: int = 500, seed: int = 0) -> dict:
    """The conditional test ELBO of packed ``test_x`` and, with ``nll_samples`` = k > 0, the
    CVAE's conditional NLL (IWAE-k from Q(z|X, Y)) beside the baseline's exact NLL.

    Returns a JSON-ready dict, nats per datum (``*_bits_per_dim``: per modelled value):
    ``test_elbo``; ``baseline_nll`` (and ``_se``, ``_bits_per_dim``); with k > 0 also
    ``test_nll`` (``_se``, ``_mc_se``, ``_ess``, ... as for a VAE) and ``nll_difference``
    = test_nll - baseline_nll with ``nll_difference_se``, the paired s.e. over the test
    data (negative: the CVAE explains Y better than the regressor).
    """
    packed = PackedCVAE(run.cvae)
    pyro.set_rng_seed(seed)
    y_dim = run.condition.y_dim
    baseline = regressor_nll(run.regressor, test_x, batch_size)
    n = len(baseline)
    result = {
        "model": "cvae", "condition": run.condition.name,
        "prior": run.config.prior, "guide": run.config.guide,
        "likelihood": run.config.likelihood,
        "test_elbo": evaluate_elbo(packed, test_x, batch_size, run.config.elbo),
        "estimator": run.config.elbo, "n_test": n, "modelled_values": y_dim,
        "units": "nats per datum (of Y given X)", "seed": seed,
        "baseline_nll": float(baseline.mean()), "baseline_nll_se": standard_error(baseline),
        "baseline_nll_bits_per_dim": float(baseline.mean()) / (y_dim * math.log(2)),
    }
    if nll_samples:
        with NllProgress(len(test_x), nll_samples) as progress:
            report, estimate = nll_report(  # per scored value of Y, not per packed value
                packed, test_x, nll_samples, chunk, progress=progress,
                combine=lambda e: replace(e, dims=y_dim))
        result.update(report)
        difference = -estimate.per_datum - baseline
        result.update({"nll_difference": float(difference.mean()),
                       "nll_difference_se": standard_error(difference)})
    return result
