"""Train a VAE on MNIST (Bernoulli likelihood, dynamic binarisation), the Pyro-example setup.

    python examples/mnist_vae.py --data-dir ../shared/data [--epochs 10] [--out runs/mnist]

Expects torchvision's layout (``MNIST/raw/*.gz``) under ``--data-dir``; writes a run folder
with metrics, a checkpoint and figures. About 2 s per epoch on 2 CPU cores with these sizes.
"""

import argparse

from pyrovae import TrainConfig, train_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--out", default="runs/mnist")
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or kmnist")
    args = parser.parse_args(argv)
    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, binarize="dynamic",
                         likelihood="bernoulli", z_dim=args.z_dim, hidden=[400],
                         epochs=args.epochs, batch_size=256, lr=1e-3)
    run = train_run(config, args.out, force=True)
    print("run folder:", run, "figures:", run / "figures")


if __name__ == "__main__":
    main()
