"""Run configuration: one dataclass, validated with clear errors, saved as ``config.json``.

Every field of :class:`TrainConfig` is a ``pyrovae train`` flag (``z_dim`` -> ``--z-dim``);
its ``help`` metadata is the flag's help text, so the CLI and this file cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrovae.components.data import BINARIZE_MODES, DATASETS
from pyrovae.components.files import LAYOUTS, check_file_dataset_name, is_file_dataset
from pyrovae.components.guides import GUIDES
from pyrovae.components.likelihoods import LIKELIHOODS
from pyrovae.components.networks import ACTIVATIONS, NETWORKS
from pyrovae.components.priors import PRIORS
from pyrovae.components.validation import (
    check_bool,
    check_int,
    check_one_of,
    check_positive_float,
    check_seed,
)
from pyrovae.inference.estimators import ESTIMATORS, Estimator, build_estimator
from pyrovae.inference.importance import check_alpha
from pyrovae.models.conditioning import CONDITIONS
from pyrovae.runs.job import JOBS, USER_MODEL, is_user_model, job_class
from pyrovae.runs.plugins import load_plugins
from pyrovae.training.averaging import check_decay
from pyrovae.training.checks import check_kl_weight
from pyrovae.training.steppers import COMPILE_MODES, NAN_ACTIONS, STEPPERS
from pyrovae.training.traced import GEMM_CHOICES

MAX_WIDTH = 2 ** 20  # z_dim, hidden widths, mixture components: a 784 x 2**20 layer is 3 GB
MAX_EPOCHS = 10 ** 6  # about a day at the digits' 0.1 s per epoch
MAX_COUNT = 10 ** 4  # particles and flow steps
DEFAULT_Z_DIM = 2
REMOVED_FIELDS = ("cvae_prior",)  # fields of earlier config.json files, now elsewhere
RENAMED_VALUES = {"elbo": {"meanfield": "analytic"}}  # one estimator, once two names


def are_widths(sizes) -> bool:
    """Whether ``sizes`` is a non-empty list (or tuple) of integers in [1, MAX_WIDTH]:
    layer widths, channels, latent sizes."""
    return isinstance(sizes, (list, tuple)) and bool(sizes) and all(
        not isinstance(h, bool) and isinstance(h, int) and 1 <= h <= MAX_WIDTH for h in sizes)


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a config.json or a checkpoint's config) in today's fields: the model
    kind's job converts its own old fields first (:meth:`~pyrovae.runs.job.Job.migrate_config`),
    then fields no kind uses any more are dropped and renamed values (``elbo: meanfield``, the
    same estimator as ``analytic``) take today's names. Returns a new dict."""
    values = dict(values)
    kind = values.get("model", CONFIG_DEFAULTS["model"])
    if is_user_model(kind) or kind in JOBS:
        values = job_class(kind).migrate_config(values)
    for name in REMOVED_FIELDS:
        values.pop(name, None)
    for name, renamed in RENAMED_VALUES.items():
        if values.get(name) in renamed:
            values[name] = renamed[values[name]]
    return values


def _f(default, help: str, **extra):
    """A dataclass field with CLI help text (and optional ``choices``) in its metadata."""
    kwargs = {"default_factory": lambda: type(default)(default)} \
        if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"help": help, **extra}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the ~1-minute CPU digits demo."""

    dataset: str = _f("digits", "data set, or your own images: folder:PATH (image files; "
                      "sub-folders are labels, train/ and test/ the split) or array:FILE "
                      "(.npy, or .npz with x, y, test_x, test_y)", choices=DATASETS.names)
    test_fraction: float = _f(0.1, "folder:/array: data without a test set: the share held "
                              "out for testing (a fixed-seed split)")
    layout: str = _f("auto", "array: data of shape (N, a, b, c): channels first (nchw) or "
                     "last (nhwc); auto reads it from the shape", choices=lambda: list(LAYOUTS))
    data_dir: str | None = _f(None, "folder holding torchvision-layout data (default "
                              "$PYROVAE_DATA or ~/.cache/pyrovae)")
    download: bool = _f(False, "let torchvision download a missing data set")
    binarize: str = _f("none", "binarise pixels: none, static (sampled once, fixed seed) or "
                       "dynamic (resampled every batch)", choices=lambda: list(BINARIZE_MODES))
    dequantize: bool = _f(False, "8-bit data: train on (k + u) / 256, u ~ U[0, 1) afresh "
                          "each batch (the test set dequantised once), so a continuous "
                          "likelihood's bits/dim bound those of the 8-bit values (+ log 256 "
                          "per dimension)")
    likelihood: str = _f("gaussian", "P(X|z)", choices=LIKELIHOODS.names)
    sigma: float = _f(0.1, "standard deviation of the fixed-sigma Gaussian likelihood (the "
                      "scale b of the laplace one), in pixel units (data in [0, 1])")
    prior: str = _f("standard_normal", "P(z) (for a cvae: P(z|X); conditional_normal is a "
                    "prior network on X)", choices=PRIORS.names)
    guide: str = _f("diagonal", "Q(z|X): diagonal N(mu(X), diag sigma^2(X)), or flow (that "
                    "Gaussian then --flow-steps IAF steps conditioned on X; for a cvae: on X "
                    "and Y)", choices=GUIDES.names)
    components: int = _f(10, "mixture components K of the mixture and vamp priors")
    flow_steps: int = _f(2, "affine autoregressive steps of the flow prior and flow guide")
    logistic_components: int = _f(5, "mixture components K of the discretized_logistic "
                                  "likelihood (8-bit data)")
    z_dim: int = _f(DEFAULT_Z_DIM, "latent dimension k (2 also draws figures/latent.png); "
                    "for an hvae, the top layer's")
    hidden: list[int] = _f([256], "encoder hidden widths; the decoder mirrors them")
    activation: str = _f("relu", "hidden activation", choices=ACTIVATIONS.names)
    network: str = _f("mlp", "encoder and decoder: mlp (fully connected, --hidden), or conv "
                      "(--channels down-sampling conv blocks, then --hidden fully connected; "
                      "the decoder mirrors it)", choices=lambda: list(NETWORKS))
    channels: list[int] = _f([32, 64], "conv: output channels of each down-sampling block "
                             "(each halves the image's height and width)")
    elbo: str = _f("trace", "ELBO estimator used for training and evaluation",
                   choices=ESTIMATORS.names)
    particles: int = _f(1, "Monte-Carlo particles per step")
    alpha: float = _f(0.5, "Renyi order alpha of --elbo renyi (finite, not 1; 0 is the IWAE "
                      "bound)")
    score_function: bool = _f(False, "draw the guide's z without reparameterisation (same "
                              "model): score-function gradients (trace, tracegraph, renyi, "
                              "iwae)")
    beta: float = _f(1.0, "KL weight B: train on E[log P(X|z)] - B D[Q(z|X) || P(z)] (the "
                     "beta-VAE); evaluation always reports B = 1")
    kl_warmup: int = _f(0, "epochs N of linear KL warm-up: beta rises from 0 in epoch 1 to B "
                        "from epoch N + 1")
    stepper: str = _f("fast", "fast: sync-free loss + torch Adam; svi: pyro.infer.SVI + "
                      "pyro.optim.Adam (the reference)", choices=lambda: list(STEPPERS))
    compile: str = _f("auto", "auto: capture the fast step in a CUDA graph on CUDA when the "
                      "estimator and guide allow it, and trace on the CPU for runs of 500 "
                      "steps or more (the log says which and why); graph: "
                      "insist; trace: on the CPU, record the step once as a tensor program "
                      "and replay it; inductor: that program compiled by torch.compile "
                      "(seconds to compile, float32-rounding-equal); none: eager",
                      choices=lambda: list(COMPILE_MODES))
    gemm: str = _f("default", "for a traced step: the matrix products' library, default "
                   "(torch's), onednn, or measure (time both on the step's products, take "
                   "oneDNN if 5 percent faster; a close call may differ between runs)",
                   choices=lambda: list(GEMM_CHOICES))
    on_nan: str = _f("stop", "on a NaN/infinite loss or gradient: stop (keep the last good "
                     "checkpoint) or skip the bad updates (fast stepper)",
                     choices=lambda: list(NAN_ACTIONS))
    epochs: int = _f(100, "number of passes over the training data")
    batch_size: int = _f(64, "mini-batch size (the last partial batch is dropped)")
    lr: float = _f(3e-3, "Adam learning rate")
    clip_norm: float | None = _f(None, "clip each parameter's gradient to this L2 norm")
    ema_decay: float | None = _f(None, "keep a Polyak (exponential moving) average of the "
                                 "weights, with this decay per step in (0, 1), e.g. 0.999: "
                                 "evaluate, sample, compare and the figures use the averaged "
                                 "weights; metrics.jsonl's test_elbo is the trained ones'")
    seed: int = _f(0, "random seed (torch, NumPy, Python)")
    device: str = _f("auto", "auto (CUDA when available), cpu or cuda[:N]")
    dist_timeout: float = _f(600.0, "under torchrun: seconds a rank waits for the others in "
                             "a collective before it fails (a dead rank stops the rest)")
    plugin: list[str] = _f([], "modules (names or .py paths) to import first: they register "
                           "their own priors, likelihoods, guides (see pyrovae.runs.plugins)")
    model: str = _f("vae", "the model kind: vae (P(X) with a latent), cvae (the "
                    "conditional VAE P(Y|X) of --condition, with its deterministic baseline), "
                    "hvae (stacked latent layers, --latent), or MODULE:FACTORY, your own Pyro "
                    "model: a class or function of a module (or .py file) returning an object "
                    "with model and guide methods (see pyrovae.runs.user_job)",
                    choices=lambda: JOBS.names())
    model_options: dict[str, Any] = _f({}, "for --model MODULE:FACTORY: keyword arguments "
                                       "of the factory, as KEY=VALUE (VALUE read as JSON, "
                                       "else a string), e.g. z_dim=50 hidden_dim=400")
    condition: str | None = _f(None, "cvae task: quadrant (X one quadrant, Y the other "
                               "three), half (X the left half), label (X the one-hot class, "
                               "Y the image)", choices=CONDITIONS.names, kind="cvae")
    latent: list[int] | None = _f(None, "hvae: the stochastic layers' sizes, bottom (next to "
                                  "X) first, e.g. 100 50 (Burda's two layers); the top one "
                                  "is z_dim (set from it)", kind="hvae")
    block_hidden: list[list[int]] | None = _f(
        None, "hvae: each block's hidden widths, comma-separated, one block per latent layer "
        "(block l sits below layer l), e.g. 100,100 50,50 (default: --hidden for every block)",
        kind="hvae", required=False)

    def __post_init__(self):
        for name in ("hidden", "plugin", "latent", "block_hidden", "channels"):  # tuples, as
            if isinstance(getattr(self, name), tuple):  # Python callers write them, are
                setattr(self, name, list(getattr(self, name)))  # saved as JSON lists
        if isinstance(self.block_hidden, list):
            self.block_hidden = [list(b) if isinstance(b, tuple) else b
                                 for b in self.block_hidden]
        # the hvae's top layer is its z_dim: taken from --latent unless z_dim was set apart
        if self.model == "hvae" and isinstance(self.latent, list) and self.latent and \
                isinstance(self.latent[-1], int) and self.latent[-1] >= 1 and \
                self.z_dim == DEFAULT_Z_DIM:
            self.z_dim = self.latent[-1]

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed.

        Imports the ``plugin`` modules first, so the names they register are known.
        """
        load_plugins(self.plugin)
        for name in ("likelihood", "prior", "guide", "activation", "elbo", "stepper",
                     "compile", "gemm", "on_nan", "binarize", "layout", "network"):
            check_one_of(getattr(self, name), name, _choices(name))
        if is_file_dataset(self.dataset):
            check_file_dataset_name(self.dataset)
        else:
            try:
                check_one_of(self.dataset, "dataset", _choices("dataset"))
            except ValueError as error:
                raise ValueError(f"{error}; or your own images: folder:PATH, "
                                 "array:FILE.npy|.npz") from None
        if not isinstance(self.test_fraction, (int, float)) or isinstance(
                self.test_fraction, bool) or not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be a number in (0, 1), got "
                             f"{self.test_fraction!r}")
        for name, most in (("z_dim", MAX_WIDTH), ("components", MAX_WIDTH),
                           ("epochs", MAX_EPOCHS), ("particles", MAX_COUNT),
                           ("flow_steps", MAX_COUNT), ("logistic_components", MAX_COUNT),
                           ("batch_size", None)):
            check_int(getattr(self, name), name, maximum=most)
        check_seed(self.seed)
        for name in ("sigma", "lr", "dist_timeout") + \
                (("clip_norm",) if self.clip_norm is not None else ()):
            check_positive_float(getattr(self, name), name)
        for name in ("hidden", "channels"):
            if not are_widths(getattr(self, name)):
                raise ValueError(f"{name} must be one or more integers in [1, {MAX_WIDTH}]; "
                                 f"got {getattr(self, name)!r}")
        check_alpha(self.alpha)
        if self.ema_decay is not None:
            check_decay(self.ema_decay)
        check_bool(self.score_function, "score_function")
        check_bool(self.dequantize, "dequantize")
        likelihood = LIKELIHOODS.get(self.likelihood)
        if self.dequantize and (self.binarize != "none" or
                                getattr(likelihood, "kind", "").startswith("discrete")):
            raise ValueError(f"dequantize makes 8-bit values continuous, for a density; it "
                             f"does not suit --binarize {self.binarize} or the discrete "
                             f"likelihood {self.likelihood!r}")
        if self.dequantize and not getattr(likelihood, "normalised", True):
            raise ValueError(f"dequantize needs a normalised density for its bits/dim bound; "
                             f"likelihood {self.likelihood!r} is not one (it is clamped at "
                             "the edges)")
        check_kl_weight(self.beta, self.kl_warmup, self.build_estimator())
        self._validate_model()
        return self

    def _validate_model(self) -> None:
        """``model`` and the fields that belong to one kind (metadata ``kind``): such a field
        is set only for its kind, and is required there (unless its metadata says
        ``required=False``), one of its ``choices`` if it has them; then the kind's own
        checks."""
        if not isinstance(self.model, str) or \
                (not is_user_model(self.model) and self.model not in JOBS):
            kinds = ", ".join(n for n in JOBS.names() if n != USER_MODEL)
            raise ValueError(f"model must be one of {kinds}, or {USER_MODEL} (your own Pyro "
                             f"model); got {self.model!r}")
        if not isinstance(self.model_options, dict) or \
                not all(isinstance(k, str) for k in self.model_options):
            raise ValueError(f"model_options must be a mapping of option names to values, "
                             f"got {self.model_options!r}")
        if self.model_options and not is_user_model(self.model):
            raise ValueError(f"model_options {self.model_options!r} need --model "
                             f"{USER_MODEL} (pyrovae's own kinds take their flags)")
        for name, f in CONFIG_FIELDS.items():
            kind = f.metadata.get("kind")
            if kind is None:
                continue
            value = getattr(self, name)
            if self.model != kind:
                if value is not None:
                    raise ValueError(f"{name} {value!r} needs --model {kind}")
            elif "choices" in f.metadata and value not in _choices(name):
                raise ValueError(f"model {kind!r} needs {name}: one of "
                                 f"{', '.join(_choices(name))}; got {value!r}")
            elif value is None and f.metadata.get("required", True):
                raise ValueError(f"model {kind!r} needs {name}: --{name.replace('_', '-')} "
                                 f"({f.metadata['help'].split(': ', 1)[-1]})")
        job_class(self.model).check_config(self)

    def build_estimator(self) -> Estimator:
        """The estimator ``elbo`` with ``particles``, ``alpha`` and ``score_function``."""
        return build_estimator(self.elbo, self.particles, alpha=self.alpha,
                               score_function=self.score_function)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict of today's fields; unknown keys raise ``ValueError``. (A saved
        ``config.json`` goes through :func:`migrate` first: :meth:`load` does that.)"""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        for name, value in values.items():
            _check_type(name, value)
        return cls(**values).validate()

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a JSON config file."""
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        return cls.from_dict(migrate(values))


def _check_type(name: str, value) -> None:
    """``ValueError`` unless ``value`` has the JSON type of field ``name`` (a hand-edited
    config.json with ``"hidden": 256`` or ``"z_dim": [2]`` gets a message, not a crash)."""
    hint = FIELD_TYPES[name]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                                                                   types.UnionType) else (hint,)
    if any(_has_type(value, option) for option in options):
        return
    wanted = " or ".join(_TYPE_NAMES.get(o, getattr(o, "__name__", str(o))) for o in options)
    raise ValueError(f"config field {name} must be {wanted}; got {json.dumps(value)}")


def _has_type(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        (element,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, element) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               type(None): "null", list[int]: "a list of integers",
               list[str]: "a list of strings", dict[str, Any]: "an object",
               list[list[int]]: "a list of lists of integers"}


def _choices(name: str) -> list[str]:
    choices = CONFIG_FIELDS[name].metadata["choices"]
    return choices()


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_TYPES = typing.get_type_hints(TrainConfig)
CONFIG_DEFAULTS = TrainConfig().to_dict()


def load_config(run_dir: Path) -> TrainConfig:
    """The config of a run folder; ``ValueError`` if ``run_dir`` is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"{run_dir} is not a pyrovae run folder (no config.json)")
    return TrainConfig.load(run_dir / "config.json")
