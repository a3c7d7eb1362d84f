"""Your own Pyro model as a model kind: ``pyrovae train --model my_module:MyVAE``.

``--model MODULE:FACTORY`` names a class or function (``FACTORY``) of an importable module
or a ``.py`` file (``MODULE``, found as ``--plugin`` finds plug-ins, and imported again by
``evaluate``, ``sample``, ``check-kl``, ``compare`` and ``--resume``). pyrovae calls it with
``--model-options KEY=VALUE ...`` (the config field ``model_options``) and, when it takes a
parameter named ``data_shape``, the shape of one datum (e.g. ``(1, 28, 28)``). It returns an
object with ``model`` and ``guide`` methods (Pyro's ``examples/vae`` VAE as written), or a
``(model, guide)`` tuple of functions. Its parameters may be in ``nn.Module``\\ s,
``pyro.module`` registrations or ``pyro.param`` statements, created in the constructor or on
the first call (:class:`~pyrovae.inference.pair.PyroPair` finds them).

The model is called as ``model(x)`` with a batch ``(B, *data_shape)`` of the config's data
set (binarised as ``--binarize`` says). What it must offer:

- training, ``evaluate`` (test ELBO; IS log P(X) when every sample site is inside the data
  plate), ``check-kl``, ``compare``, ``--resume``: nothing more;
- samples and reconstructions (``pyrovae sample``, the figures written after training): the
  observed site holding the data must have a distribution with a ``mean``
  (:mod:`pyrovae.inference.generation`); otherwise only the curves are drawn, and
  ``sample`` says why.

pyrovae's own model fields (``--prior``, ``--likelihood``, ``--z-dim``, ...) do not apply and
are refused when set (``config.json`` still lists them, at their defaults).

What any pair must do for some estimators (Pyro's own rules, as for ``RenyiELBO``):

- ``iwae``, ``iwae_dreg``, ``renyi``, ``--particles`` > 1 and IS log P(X) draw the particles
  as a plate on the left: the model's tensor code must broadcast over leading dimensions
  (``torch.cat([z, y], -1)`` with ``y`` of shape ``(B, D)`` does not; expand ``y`` first);
- ``analytic`` assumes a mean-field guide (no model parent of a latent is drawn after it in
  the guide), as Pyro's ``TraceMeanField_ELBO`` does; ``check-kl`` shows when it is not;
- ELBOs are reported per datum of the batch: a model that rescales its log-densities
  (``pyro.plate(..., subsample=...)`` or ``poutine.scale``) gets its scaled bound, while the
  IS log P(X) of ``evaluate`` is always unscaled.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pyro
import torch

from pyrovae.components.data import Dataset
from pyrovae.components.rng import forked_rng
from pyrovae.inference.generation import Generator
from pyrovae.inference.pair import PyroPair
from pyrovae.runs import plots
from pyrovae.runs.checkpoints import model_state
from pyrovae.runs.config import CONFIG_DEFAULTS, TrainConfig
from pyrovae.runs.job import JOBS, USER_MODEL, prepare_data
from pyrovae.runs.plugins import load_plugin
from pyrovae.runs.vae_job import VAEJob

logger = logging.getLogger(__name__)

#: TrainConfig fields that configure pyrovae's own VAE, not a user's model
VAE_FIELDS = ("likelihood", "sigma", "prior", "guide", "components", "flow_steps", "z_dim",
              "hidden", "activation", "logistic_components", "network", "channels")


def load_factory(spec: str):
    """The callable ``FACTORY`` of ``MODULE:FACTORY``; ``ValueError`` naming what is wrong."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute.isidentifier():
        raise ValueError(f"--model {spec!r} must be MODULE:FACTORY (a module name or .py path, "
                         "then the name of a class or function in it)")
    module = load_plugin(module_name)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--model {spec!r}: {module_name} has no class or function "
                         f"{attribute!r}")
    return factory


def build_user_pair(config: TrainConfig, data_shape: tuple[int, ...]) -> PyroPair:
    """The config's user model as a :class:`PyroPair` (on the CPU, not yet set up)."""
    factory = load_factory(config.model)
    options = dict(config.model_options)
    try:
        accepts_shape = "data_shape" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        accepts_shape = False
    if accepts_shape:
        options.setdefault("data_shape", tuple(data_shape))
    try:
        made = factory(**options)
    except Exception as error:  # one line; the traceback goes to the log (-v shows it)
        logger.info("--model %s raised", config.model, exc_info=True)
        raise ValueError(f"--model {config.model}: calling it with --model-options "
                         f"{config.model_options} failed: {type(error).__name__}: {error} "
                         "(pyrovae -v train ... shows the traceback)") from None
    if isinstance(made, tuple) and len(made) == 2:
        return PyroPair(*made, data_shape=data_shape)
    return PyroPair(made, data_shape=data_shape)


@JOBS.register(USER_MODEL)
class UserModelJob(VAEJob):
    """A user's Pyro model/guide pair on the config's images (see the module docstring)."""

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        changed = [name for name in VAE_FIELDS if getattr(config, name) != CONFIG_DEFAULTS[name]]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ValueError(f"{flags} configure pyrovae's own VAE; --model {config.model} "
                             "builds its own: pass its options with --model-options KEY=VALUE")
        if config.dequantize:
            raise ValueError(f"--dequantize needs pyrovae's own likelihoods (for the log 256 "
                             f"correction of bits/dim); --model {config.model} brings its own")
        load_factory(config.model)

    def summary(self) -> str:
        options = " ".join(f"{k}={v}" for k, v in self.config.model_options.items())
        return f"your model {self.config.model}" + (f" ({options})" if options else "")

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.module.data_shape)

    def prepare(self, data: Dataset) -> None:
        self.module = build_user_pair(self.config, data.image_shape).to(self.device)
        self.data = prepare_data(self.config, data, self.device)
        self.train_x, self.test_x = self.data.train_x, self.data.test_x

    def finish(self, history: list[dict], run_dir: Path) -> None:
        folder = run_dir / "figures"
        plots.plot_curves(history, folder / "curves.png")
        generator = Generator(self.module, self.test_x)
        try:
            with forked_rng(self.device), torch.no_grad():
                torch.manual_seed(self.config.seed)
                plots.plot_samples(generator, folder / "samples.png")
                plots.plot_reconstructions(generator, self.test_x, folder / "reconstructions.png")
        except ValueError as error:  # the model cannot generate: say so, keep the run
            logger.warning("no samples or reconstructions drawn: %s", error)

    def load(self, run_dir: Path) -> PyroPair:
        state, data_shape = model_state(run_dir)
        pyro.clear_param_store()  # the store is global: no stale entry may shadow this model's
        pair = build_user_pair(self.config, data_shape).to(self.device)
        # find lazily created parameters on a batch of the right shape (its values do not
        # matter: they are overwritten by the checkpoint's)
        pair.setup(torch.zeros((2, *data_shape), device=self.device))
        pair.load_state_dict(state)
        return pair.eval()

    def sampler(self, run_dir: Path) -> Generator:
        """Samples are means of P(X|z), z ~ P(z), from the model's own data site."""
        return Generator(*self.test_pair(run_dir))

    def test_pair(self, run_dir: Path) -> tuple[PyroPair, torch.Tensor]:
        pair = self.load(run_dir)
        return pair, prepare_data(self.config, self.load_data(), self.device).test_x
