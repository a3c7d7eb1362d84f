"""Your own likelihood P(X|z), registered by name, trained from Python and the command line.

    python examples/custom_likelihood.py [--epochs 20] [--out custom_likelihood]

This file is also a plug-in: from a shell,

    pyrovae train --plugin examples/custom_likelihood.py --likelihood student_t --sigma 0.05

Doersch: any P(X|z) that is computable and continuous in theta will do.
"""

import argparse
import json

import pyro.distributions as dist

from pyrovae import LIKELIHOODS, Likelihood, TrainConfig, train_run
from pyrovae.runs.cli import main as pyrovae_cli


@LIKELIHOODS.register("student_t")
class StudentTLikelihood(Likelihood):
    """P(X|z) = prod_i StudentT(x_i; nu, f_i(z), sigma): a Gaussian with heavy tails, so a
    few badly reconstructed pixels cost less. One decoder output (the location) per pixel;
    any finite data is in its support (the base class's ``check``)."""

    params_per_value = 1

    def __init__(self, sigma: float = 0.1, df: float = 3.0):  # `--sigma` reaches `sigma`
        super().__init__()
        self.sigma, self.df = float(sigma), float(df)

    def distribution(self, loc):
        return dist.StudentT(self.df, loc, self.sigma)


def main(epochs: int = 20, out: str = "custom_likelihood") -> None:
    # 1. Python, through a config (it records this file as the run's plug-in)
    config = TrainConfig(likelihood="student_t", sigma=0.05, plugin=[__file__], epochs=epochs)
    run = train_run(config, f"{out}/python", force=True, progress=False)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"Python API: test ELBO {metrics['test_elbo']:.1f} nats per image")

    # 2. The command line (in-process here): train with the plug-in; sampling a run folder
    # imports the run's plug-in again
    for argv in (["train", "--plugin", __file__, "--likelihood", "student_t", "--sigma", "0.05",
                  "--epochs", str(epochs), "--out", f"{out}/cli", "--force", "--quiet"],
                 ["sample", str(run), "-n", "16"]):
        assert pyrovae_cli(argv) == 0, f"pyrovae {' '.join(argv)} failed"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="custom_likelihood")
    args = parser.parse_args()
    main(args.epochs, args.out)
