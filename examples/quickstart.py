"""Quickstart: train Doersch's VAE on the bundled digits from Python, then sample from it.

    python examples/quickstart.py [--epochs 30] [--out quickstart.png]

Runs in about 10 s on 2 CPU cores; the same code is the README's API example.
"""

import argparse

import pyro

from pyrovae import VAE, Trainer, load_dataset
from pyrovae.runs.plots import plot_samples


def main(epochs: int = 30, out: str = "quickstart.png") -> float:
    pyro.set_rng_seed(0)
    data = load_dataset("digits")  # train (1497, 1, 8, 8), test (300, 1, 8, 8), in [0, 1]
    vae = VAE(data.image_shape, z_dim=2, hidden=(256,), likelihood="gaussian")
    trainer = Trainer(vae, estimator="trace", lr=3e-3)
    history = trainer.fit(data.train_x, epochs=epochs, batch_size=64, test_x=data.test_x)
    print(f"test ELBO after {epochs} epochs: {history[-1]['test_elbo']:.1f} nats per image")

    # vae.model and vae.guide are plain Pyro: any Pyro inference can use them
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                         pyro.infer.Trace_ELBO())
    print(f"one more SVI step, loss {svi.step(data.train_x[:64]) / 64:.1f} nats per image")

    reconstructions = vae.reconstruct(data.test_x[:8])  # (8, 1, 8, 8) decoder means
    print("reconstruction shape", tuple(reconstructions.shape))
    print("wrote", plot_samples(vae, out, n=64))
    return history[-1]["test_elbo"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="quickstart.png")
    args = parser.parse_args()
    main(args.epochs, args.out)
