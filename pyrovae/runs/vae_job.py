"""The ``vae`` model kind: Doersch's VAE of P(X), its figures, evaluation and samples."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import torch

from pyrovae.components.conv import ConvDecoder, ConvEncoder
from pyrovae.components.data import LEVELS, Dataset
from pyrovae.components.likelihoods import build_likelihood
from pyrovae.components.priors import PRIORS
from pyrovae.components.rng import forked_rng
from pyrovae.components.validation import check_int
from pyrovae.inference.active_units import active_units, activity_report
from pyrovae.inference.evaluation import evaluate_elbo, nll_report
from pyrovae.models.vae import VAE
from pyrovae.runs import plots
from pyrovae.runs.checkpoints import model_state
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.job import JOBS, Job, check_limit, component_options, prepare_data
from pyrovae.training import distributed
from pyrovae.training.callbacks import NllProgress

DEQUANTIZED_KIND = ("dequantised: a density on (k + u) / 256, whose NLL + D log 256 bounds "
                    "the 8-bit values' (test_nll_8bit; bits/dim from it)")


def dequantized_bits(report: dict, dims: int) -> dict:
    """For a density on dequantised data (D values per datum): -log P(8-bit X) <= test_nll +
    D log 256 nats, and the bits per dimension of that bound (test_nll/(D ln 2) + 8)."""
    nats = report["test_nll"] + dims * math.log(LEVELS)
    return {"test_nll_8bit": nats,
            "test_nll_bits_per_dim": nats / (dims * math.log(2)),
            "test_nll_bits_per_dim_continuous": report["test_nll_bits_per_dim"]}


def build_vae(config: TrainConfig, data_shape: tuple[int, ...]) -> VAE:
    """The VAE a config describes (prior, likelihood, guide, networks), on the CPU.

    The VAE builds its components by name; each takes the options of the config that its
    constructor declares (``sigma``, ``components``, ``flow_steps``, ``hidden``).
    """
    likelihood = build_likelihood(config.likelihood, **component_options(config))
    return VAE(data_shape, z_dim=config.z_dim, hidden=config.hidden,
               activation=config.activation, prior=config.prior, likelihood=likelihood,
               guide=config.guide,
               **conv_networks(config, data_shape, config.z_dim, likelihood.params_per_value),
               **component_options(config))


def conv_networks(config: TrainConfig, data_shape: tuple[int, ...], z_dim: int,
                  params_per_value: int, hidden: list[int] | None = None) -> dict:
    """``{"encoder": ConvEncoder, "decoder": ConvDecoder}`` for ``network="conv"`` (between
    X and a ``z_dim`` latent layer; fully connected widths ``hidden``, default the
    config's), else ``{}`` (the models' own MLPs)."""
    if config.network != "conv":
        return {}
    hidden = config.hidden if hidden is None else hidden
    return {"encoder": ConvEncoder(data_shape, config.channels, hidden, z_dim,
                                   config.activation),
            "decoder": ConvDecoder(z_dim, data_shape, config.channels, hidden,
                                   params_per_value, config.activation)}


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


@JOBS.register("vae")
class VAEJob(Job):
    """P(X) with a latent: the :class:`~pyrovae.models.vae.VAE` on the images themselves."""

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        if PRIORS.get(config.prior).needs_context:
            raise ValueError(f"prior {config.prior!r} is P(z|X) and needs a context: use it "
                             "with --model cvae")

    def build(self, data_shape: tuple[int, ...]) -> VAE:
        """The kind's model for data of ``data_shape``, on the CPU, freshly initialised."""
        return build_vae(self.config, data_shape)

    def prepare(self, data: Dataset) -> None:
        self.module = self.build(data.image_shape).to(self.device)
        self.data = prepare_data(self.config, data, self.device, self.module.likelihood.check)
        self.train_x, self.test_x = self.data.train_x, self.data.test_x

    def finish(self, history: list[dict], run_dir: Path) -> None:
        write_figures(self.module, self.data, history, run_dir / "figures",
                      seed=self.config.seed)

    def load(self, run_dir: Path) -> VAE:
        state, data_shape = model_state(run_dir)
        vae = self.build(data_shape)
        vae.load_state_dict(state)
        return vae.to(self.device).eval()

    def test_pair(self, run_dir: Path) -> tuple[VAE, torch.Tensor]:
        vae = self.load(run_dir)
        data = prepare_data(self.config, self.load_data(), self.device, vae.likelihood.check)
        return vae, data.test_x

    def evaluate(self, run_dir: Path, batch_size: int = 1000, nll_samples: int = 0,
                 chunk: int = 500, limit: int | None = None, seed: int = 0,
                 ctx=distributed.SINGLE) -> dict:
        """Test ELBO (and IS-k NLL) of the run, and its active units (Burda's
        Cov_X(E_Q[u|X]) > 0.01 per latent site, over every test image; figure
        :meth:`evaluation_figures` draws them); under torchrun each rank takes every W-th test image
        for the bounds and the result is over all of them."""
        vae, all_test = self.test_pair(run_dir)
        check_limit(limit, len(all_test))
        all_test = all_test[:limit]
        distributed.check_shardable(len(all_test), ctx, "the test set (--limit)")
        test_x = distributed.shard(all_test, ctx, equal=False)
        # one process: the seed itself; several: a distinct stream per rank
        pyro.set_rng_seed(distributed.rank_seed(seed, 0, ctx.rank) if ctx.enabled else seed)
        elbo = evaluate_elbo(vae, test_x, batch_size, self.config.elbo)
        result = {
            "test_elbo": distributed.reduce_mean(elbo, len(test_x), ctx, self.device),
            "n_test": len(all_test),
            "estimator": self.config.elbo,
            "units": "nats per datum",
            "likelihood_kind": DEQUANTIZED_KIND if self.config.dequantize else
            getattr(getattr(vae, "likelihood", None), "kind", "unknown (a user's model)"),
            "seed": seed,
            "world_size": ctx.world_size,
        }
        if nll_samples:
            with NllProgress(len(test_x), nll_samples, is_main=ctx.is_main) as progress:
                report, _ = nll_report(
                    vae, test_x, nll_samples, chunk, progress=progress,
                    combine=lambda e: distributed.gather_log_likelihood(e, ctx))
            result.update(report)
            if self.config.dequantize:
                result.update(dequantized_bits(report, all_test[0].numel()))
        # every rank scores all test data on the same draws (cheap: guide passes only)
        with forked_rng(self.device):
            pyro.set_rng_seed(seed)
            activity, draws = active_units(vae, all_test, draws=None)
        result.update(activity_report(activity, draws))
        return result

    def evaluation_figures(self, run_dir: Path, result: dict) -> list[Path]:
        """``figures/active_units.png`` from the evaluation's per-unit activities."""
        return [plots.plot_activity(result["active_units"],
                                    Path(run_dir) / "figures" / "active_units.png")]

    def sample(self, run_dir: Path, n: int | None = None, out: Path | None = None,
               seed: int = 0, given: str | None = None, rows: int | None = None) -> str:
        """``n`` (default 64) decoder means of z ~ P(z) on a grid, to ``out`` (default
        ``RUN_DIR/figures/samples.png``)."""
        if given is not None:
            raise ValueError(f"--given completes inputs of a cvae run; {run_dir} holds a "
                             f"{self.config.model}")
        n = 64 if n is None else check_int(n, "-n", maximum=plots.MAX_IMAGES)
        path = Path(run_dir) / "figures" / "samples.png" if out is None \
            else plots.figure_path(out, "samples.png")
        sampler = self.sampler(run_dir)
        torch.manual_seed(seed)
        path = plots.plot_samples(sampler, path, n=n)
        return f"wrote {n} samples to {path}"

    def sampler(self, run_dir: Path):
        """What :meth:`sample` draws from: an object with ``sample(n)`` (the trained VAE)."""
        return self.load(run_dir)
