"""pyrovae: Doersch's variational autoencoder as a Pyro model and guide, trained by SVI.

The public API, re-exported from the modules that own it::

    from pyrovae import VAE, Trainer, load_dataset, load_run
"""

__version__ = "0.1.0"

from pyrovae.config import TrainConfig
from pyrovae.data import DATASETS, Dataset, DeviceBatches, binarize, load_dataset
from pyrovae.estimators import ESTIMATORS, Estimator, build_estimator
from pyrovae.evaluation import evaluate_elbo
from pyrovae.likelihoods import LIKELIHOODS, Likelihood, build_likelihood
from pyrovae.model import VAE
from pyrovae.networks import MLP, Decoder, Encoder
from pyrovae.priors import PRIORS, Prior, StandardNormal
from pyrovae.registry import Registry
from pyrovae.runs import build_vae, load_run, train_run
from pyrovae.sync_guard import HostSyncError, SyncGuard
from pyrovae.training import Trainer, resolve_device

__all__ = [
    "DATASETS", "Dataset", "Decoder", "DeviceBatches", "ESTIMATORS", "Encoder", "Estimator",
    "HostSyncError", "LIKELIHOODS", "Likelihood", "MLP", "PRIORS", "Prior", "Registry",
    "StandardNormal", "SyncGuard", "TrainConfig", "Trainer", "VAE", "binarize",
    "build_estimator", "build_likelihood", "build_vae", "evaluate_elbo", "load_dataset",
    "load_run", "resolve_device", "train_run",
]
