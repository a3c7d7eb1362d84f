"""pyrovae: Doersch's variational autoencoder as a Pyro model and guide, trained by SVI.

The public API, re-exported from the modules that own it::

    from pyrovae import VAE, Trainer, load_dataset, load_run
"""

__version__ = "0.1.0"

from pyrovae.check_kl import check_kl, run_check_kl
from pyrovae.compare import EstimatorSpec, compare_estimators, run_compare
from pyrovae.conditioning import CONDITIONS, Condition, build_condition
from pyrovae.config import TrainConfig
from pyrovae.cvae import CVAE, CVAE_PRIORS, PackedCVAE, Regressor
from pyrovae.cvae_runs import evaluate_cvae_run, load_cvae_run
from pyrovae.data import DATASETS, Dataset, DeviceBatches, binarize, load_dataset
from pyrovae.estimators import (
    ESTIMATORS,
    AnalyticELBO,
    Estimator,
    EstimatorAxes,
    MeanFieldELBO,
    TraceELBO,
    TraceGraphELBO,
    build_estimator,
)
from pyrovae.evaluation import LogLikelihood, evaluate_elbo, log_likelihood
from pyrovae.guides import GUIDES, DiagonalGuide, FlowGuide, Guide, build_guide
from pyrovae.handlers import KLWeightMessenger, ScoreFunctionMessenger
from pyrovae.iwae import IWAE, ImportanceWeighted, IWAEDReG, RenyiBound, renyi_bound
from pyrovae.kl import (
    KLEstimate,
    PyroAnalyticELBO,
    closed_form_kl,
    kl_diag_normal,
    kl_or_mc,
    kl_standard_normal,
)
from pyrovae.likelihoods import LIKELIHOODS, Likelihood, build_likelihood
from pyrovae.linear_gaussian import LinearGaussianVAE, make_linear_gaussian
from pyrovae.model import VAE
from pyrovae.networks import MLP, Decoder, Encoder
from pyrovae.plugins import load_plugin, load_plugins
from pyrovae.priors import (
    PRIORS,
    DiagonalNormal,
    FlowPrior,
    MixturePrior,
    Prior,
    StandardNormal,
    VampPrior,
    build_prior,
)
from pyrovae.registry import Registry
from pyrovae.runs import build_vae, load_run, train_run
from pyrovae.sync_guard import HostSyncError, SyncGuard
from pyrovae.training import Trainer, resolve_device

__all__ = [
    "GUIDES", "DiagonalGuide", "DiagonalNormal", "FlowGuide", "FlowPrior", "Guide",
    "MixturePrior", "VampPrior", "build_guide", "build_prior", "load_plugin", "load_plugins",
    "DATASETS", "AnalyticELBO", "Dataset", "Decoder", "DeviceBatches", "ESTIMATORS", "Encoder",
    "Estimator", "HostSyncError", "KLEstimate", "LIKELIHOODS", "Likelihood",
    "LinearGaussianVAE", "MLP", "MeanFieldELBO", "PRIORS", "Prior", "PyroAnalyticELBO",
    "Registry", "StandardNormal", "SyncGuard", "TraceELBO", "TrainConfig", "Trainer", "VAE",
    "binarize", "build_estimator", "build_likelihood", "build_vae", "check_kl",
    "closed_form_kl", "evaluate_elbo", "kl_diag_normal", "kl_or_mc", "kl_standard_normal",
    "load_dataset", "load_run", "make_linear_gaussian", "resolve_device", "run_check_kl",
    "train_run",
    "EstimatorAxes", "EstimatorSpec", "IWAE", "IWAEDReG", "ImportanceWeighted",
    "KLWeightMessenger", "LogLikelihood", "RenyiBound", "ScoreFunctionMessenger",
    "TraceGraphELBO", "compare_estimators", "log_likelihood", "renyi_bound", "run_compare",
    "CONDITIONS", "CVAE", "CVAE_PRIORS", "Condition", "PackedCVAE", "Regressor",
    "build_condition", "evaluate_cvae_run", "load_cvae_run",
]
