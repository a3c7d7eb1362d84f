"""The ``hvae`` model kind: a VAE with stacked stochastic layers (Burda et al.'s two-layer
model and deeper), :class:`~pyrovae.models.hvae.HierarchicalVAE`.

Everything but the model is the ``vae`` kind's (:class:`~pyrovae.runs.vae_job.VAEJob`): the
same data, figures (samples are ancestral draws; ``latent.png`` maps the top layer when it
has 2 units), evaluation (bounds, IS-k NLL, active units of every layer) and sampling.

    pyrovae train --model hvae --latent 100 50 --block-hidden 100,100 50,50 --activation tanh
"""

from __future__ import annotations

from pyrovae.components.likelihoods import build_likelihood
from pyrovae.models.hvae import HierarchicalVAE
from pyrovae.runs.config import MAX_WIDTH, TrainConfig, are_widths
from pyrovae.runs.job import JOBS, component_options
from pyrovae.runs.vae_job import VAEJob, conv_networks


def build_hvae(config: TrainConfig, data_shape: tuple[int, ...]) -> HierarchicalVAE:
    """The hierarchical VAE a config describes, on the CPU: layers ``latent``, blocks
    ``block_hidden`` (``hidden`` for every block when not given)."""
    likelihood = build_likelihood(config.likelihood, **component_options(config))
    hidden = config.block_hidden or [config.hidden] * len(config.latent)
    bottom = conv_networks(config, data_shape, config.latent[0], likelihood.params_per_value,
                           hidden[0])
    return HierarchicalVAE(data_shape, latent=config.latent, hidden=hidden,
                           activation=config.activation, prior=config.prior,
                           likelihood=likelihood, guide=config.guide, **bottom,
                           **component_options(config))


@JOBS.register("hvae")
class HVAEJob(VAEJob):
    """P(X) with L stochastic layers: z_L -> ... -> z_1 -> X, and a bottom-up guide."""

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        super().check_config(config)
        latent = config.latent
        if not isinstance(latent, list) or not are_widths(latent):
            raise ValueError(f"latent must be one or more layer sizes in [1, {MAX_WIDTH}], "
                             f"bottom first; got {latent!r}")
        if config.z_dim != latent[-1]:
            raise ValueError(f"z_dim is the hvae's top layer: leave it out, or give "
                             f"{latent[-1]} (latent {latent}); got {config.z_dim}")
        blocks = config.block_hidden
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) != len(latent)
                                   or not all(isinstance(b, list) and are_widths(b)
                                              for b in blocks)):
            raise ValueError(f"block_hidden must give one list of widths in [1, {MAX_WIDTH}] "
                             f"per latent layer ({len(latent)}: latent {latent}); got "
                             f"{blocks!r}")

    def summary(self) -> str:
        c = self.config
        blocks = c.block_hidden or [c.hidden] * len(c.latent)
        return (f"hvae, {c.likelihood}, latent {'-'.join(map(str, c.latent))}, blocks "
                f"{' '.join(','.join(map(str, b)) for b in blocks)}")

    def build(self, data_shape: tuple[int, ...]) -> HierarchicalVAE:
        return build_hvae(self.config, data_shape)
