"""pyrovae: Doersch's variational autoencoder as a Pyro model and guide, trained by SVI.

The public API, flat, re-exported from the layers that own it (bottom first)::

    components   networks, priors, likelihoods, guides, flows, data sets, registries
    models       VAE, CVAE, the linear-Gaussian reference, conditioning tasks
    inference    estimators, KL, handlers, evaluation, check-kl and compare statistics
    training     steppers, Trainer, callbacks, distributed, sync guard
    runs         configs, run folders, checkpoints, jobs (model kinds), figures, CLI

    from pyrovae import VAE, Trainer, load_dataset, load_run
"""

__version__ = "0.1.0"

from pyrovae.components.data import DATASETS, Dataset, DeviceBatches, binarize, load_dataset
from pyrovae.components.guides import GUIDES, DiagonalGuide, FlowGuide, Guide, build_guide
from pyrovae.components.likelihoods import LIKELIHOODS, Likelihood, build_likelihood
from pyrovae.components.networks import MLP, Decoder, Encoder
from pyrovae.components.priors import (
    PRIORS,
    ConditionalNormal,
    DiagonalNormal,
    FlowPrior,
    MixturePrior,
    Prior,
    StandardNormal,
    VampPrior,
    build_prior,
    prior_names,
)
from pyrovae.components.registry import Registry
from pyrovae.inference.check_kl import check_kl
from pyrovae.inference.compare import EstimatorSpec, compare_estimators
from pyrovae.inference.estimators import ESTIMATORS, Estimator, EstimatorAxes, build_estimator
from pyrovae.inference.evaluation import LogLikelihood, evaluate_elbo, log_likelihood
from pyrovae.inference.generation import Generator, prior_means, reconstruction_means
from pyrovae.inference.handlers import KLWeightMessenger, ScoreFunctionMessenger
from pyrovae.inference.importance import IWAE, ImportanceWeighted, IWAEDReG, RenyiBound, renyi_bound
from pyrovae.inference.kl import closed_form_kl, kl_diag_normal, kl_standard_normal
from pyrovae.inference.pair import ModelGuidePair, PyroPair, as_pair
from pyrovae.inference.trace_elbo import AnalyticELBO, TraceELBO, TraceGraphELBO
from pyrovae.models.conditioning import CONDITIONS, Condition, build_condition
from pyrovae.models.cvae import CVAE, PackedCVAE, Regressor
from pyrovae.models.linear_gaussian import LinearGaussianVAE, make_linear_gaussian
from pyrovae.models.vae import VAE
from pyrovae.runs.config import TrainConfig
from pyrovae.runs.cvae_job import evaluate_cvae_run, load_cvae_run
from pyrovae.runs.diagnostics import run_check_kl, run_compare
from pyrovae.runs.job import JOBS, Job
from pyrovae.runs.jobs import load_run
from pyrovae.runs.plugins import load_plugin, load_plugins
from pyrovae.runs.train import train_run
from pyrovae.runs.vae_job import build_vae
from pyrovae.training.callbacks import Callback, ProgressBar, StopOnSigint
from pyrovae.training.sync_guard import HostSyncError, SyncGuard
from pyrovae.training.trainer import Trainer, resolve_device

__all__ = [
    "GUIDES", "DiagonalGuide", "DiagonalNormal", "FlowGuide", "FlowPrior", "Guide",
    "MixturePrior", "VampPrior", "build_guide", "build_prior", "load_plugin", "load_plugins",
    "DATASETS", "AnalyticELBO", "Dataset", "Decoder", "DeviceBatches", "ESTIMATORS", "Encoder",
    "Estimator", "HostSyncError", "LIKELIHOODS", "Likelihood",
    "LinearGaussianVAE", "MLP", "PRIORS", "Prior",
    "Registry", "StandardNormal", "SyncGuard", "TraceELBO", "TrainConfig", "Trainer", "VAE",
    "binarize", "build_estimator", "build_likelihood", "build_vae", "check_kl",
    "closed_form_kl", "evaluate_elbo", "kl_diag_normal", "kl_standard_normal",
    "load_dataset", "load_run", "make_linear_gaussian", "resolve_device", "run_check_kl",
    "train_run",
    "EstimatorAxes", "EstimatorSpec", "IWAE", "IWAEDReG", "ImportanceWeighted",
    "KLWeightMessenger", "LogLikelihood", "RenyiBound", "ScoreFunctionMessenger",
    "TraceGraphELBO", "compare_estimators", "log_likelihood", "renyi_bound", "run_compare",
    "CONDITIONS", "CVAE", "Condition", "PackedCVAE", "Regressor",
    "build_condition", "evaluate_cvae_run", "load_cvae_run",
    "Callback", "ConditionalNormal", "JOBS", "Job", "ModelGuidePair", "ProgressBar",
    "StopOnSigint", "prior_names",
    "Generator", "PyroPair", "as_pair", "prior_means", "reconstruction_means",
]
