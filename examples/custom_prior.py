"""Your own prior P(z), registered by name, trained from Python and from the command line.

    python examples/custom_prior.py [--epochs 20] [--out custom_prior]

This file is also a plug-in: from a shell,

    pyrovae train --plugin examples/custom_prior.py --prior student_t --out runs/student_t

The run folder records the plug-in, so `pyrovae sample runs/student_t` imports it again.
"""

import argparse

import pyro
import pyro.distributions as dist
import torch

from pyrovae import PRIORS, VAE, Prior, Trainer, load_dataset
from pyrovae.runs.cli import main as pyrovae_cli


@PRIORS.register("student_t")
class StudentTPrior(Prior):
    """P(z) = prod_j StudentT(z_j; nu, 0, 1): heavier tails than N(0, I) (KL by Monte Carlo)."""

    def __init__(self, z_dim: int, df: float = 4.0):
        super().__init__(z_dim)
        self.register_buffer("df", torch.full((z_dim,), float(df)))  # follows .to(device)

    def forward(self, batch_shape=()):
        return dist.StudentT(self.df, 0.0, 1.0).to_event(1).expand(batch_shape)


def main(epochs: int = 20, out: str = "custom_prior") -> None:
    # 1. Python: by name (or pass an instance, e.g. prior=StudentTPrior(2, df=2.0))
    pyro.set_rng_seed(0)
    data = load_dataset("digits")
    vae = VAE(data.image_shape, z_dim=2, prior="student_t")
    history = Trainer(vae, lr=3e-3).fit(data.train_x, epochs, 64, test_x=data.test_x)
    print(f"Python API: test ELBO {history[-1]['test_elbo']:.1f} nats per image")

    # 2. The command line, with this file as the plug-in (run in-process here)
    status = pyrovae_cli(["train", "--plugin", __file__, "--prior", "student_t", "--epochs",
                          str(epochs), "--out", f"{out}/run", "--force", "--quiet"])
    assert status == 0, f"pyrovae train exited with {status}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="custom_prior")
    args = parser.parse_args()
    main(args.epochs, args.out)
