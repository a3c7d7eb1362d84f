"""Why VAEs sample from Q: log P(X) by naive sampling from P(z) against sampling from Q(z|X).

    python examples/naive_vs_importance.py [--run RUN_DIR] [--images 8] [--max-naive 1000000]
                                           [--max-importance 5000] [--out naive_vs_importance.png]

Doersch's Problem 2: P(X) = integral P(X|z) P(z) dz. For a few test images of a trained model
(``--run``; without it a small digits model is trained for ``--epochs`` first):

    naive:       log (1/n sum_i P(X|z_i)),                   z_i ~ P(z),    n = 10 ... 10^6
    importance:  log (1/k sum_i P(X|z_i) P(z_i) / Q(z_i|X)), z_i ~ Q(z|X),  k = 1 ... 5,000

(one run of each, every smaller n or k using the first draws). Prints the mean over the images
of each estimate, nats per image, with its Monte-Carlo s.e. (delta method, images fixed) and
the mean effective sample size (sum w)^2 / sum w^2; plots both against the number of samples
on a log axis. While one draw dominates (ESS near 1) an estimate has not converged and its
s.e. saturates near 1 nat per image whatever its real error: on MNIST (z_dim 20) the naive
estimate is still ~10 nats short at 10^6 draws with an ESS of about 1, where Q gets within a
fraction of a nat of its k = 5,000 value with 1,000 draws.
"""

import argparse
import tempfile
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

from pyrovae import TrainConfig, load_dataset, load_run, train_run  # noqa: E402
from pyrovae.inference.evaluation import log_likelihood  # noqa: E402
from pyrovae.runs.job import prepare_data  # noqa: E402
from pyrovae.runs.plots import save_figure as save  # noqa: E402


def log_grid(largest: int, smallest: int = 1) -> list[int]:
    """1, 3, 10, 30, ... (half decades) from ``smallest`` up to ``largest``, which ends it."""
    grid, exponent = [], 0
    while round(10 ** (exponent / 2)) < largest:
        value = round(10 ** (exponent / 2))
        if value >= smallest:
            grid.append(value)
        exponent += 1
    return grid + [largest]


def estimates(vae, x, counts: list[int], proposal: str, chunk: int) -> list[dict]:
    start = time.perf_counter()
    results = log_likelihood(vae, x, counts, proposal, chunk)
    seconds = time.perf_counter() - start
    return [{"samples": r.samples, "mean": r.mean, "mc_se": r.mc_se, "ess": r.ess,
             "seconds": seconds} for r in results]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="trained run folder (default: train a digits model)")
    parser.add_argument("--epochs", type=int, default=20, help="digits epochs without --run")
    parser.add_argument("--images", type=int, default=8, help="test images (the first N)")
    parser.add_argument("--max-naive", type=int, default=1_000_000)
    parser.add_argument("--max-importance", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=2000, help="draws per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="naive_vs_importance.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or train_run(TrainConfig(epochs=args.epochs, hidden=[128], z_dim=5,
                                                likelihood="bernoulli", binarize="static"),
                                    f"{scratch}/digits", progress=False)
        vae, config = load_run(run)
    data = prepare_data(config, load_dataset(config.dataset, config.data_dir), vae.device,
                        vae.likelihood.check)
    x = data.test_x[:args.images]
    pyro.set_rng_seed(args.seed)
    naive = estimates(vae, x, log_grid(args.max_naive, 10), "prior", args.chunk)
    importance = estimates(vae, x, log_grid(args.max_importance), "guide", args.chunk)
    print(f"{config.dataset}, z_dim {config.z_dim}, {config.likelihood}; log P(X) of the first "
          f"{len(x)} test images, nats per image: mean over the images +- Monte-Carlo s.e.")
    print(f"{'samples':>9}  {'naive, z ~ P(z)':>30}  {'importance, z ~ Q(z|X)':>32}")
    by_count = {r["samples"]: [r, None] for r in naive}
    for r in importance:
        by_count.setdefault(r["samples"], [None, None])[1] = r
    for count in sorted(by_count):
        cells = [f"{r['mean']:>10.2f} +- {r['mc_se']:<5.2f} ESS {r['ess']:<7.1f}" if r
                 else "" for r in by_count[count]]
        print(f"{count:>9}  {cells[0]:>30}  {cells[1]:>32}")
    print(f"seconds: naive {naive[-1]['seconds']:.1f} ({args.max_naive} draws per image), "
          f"importance {importance[-1]['seconds']:.1f} ({args.max_importance})")
    plot(naive, importance, config, len(x), args.out)
    print(f"wrote {args.out}")
    return {"naive": naive, "importance": importance}


def plot(naive: list[dict], importance: list[dict], config, images: int, out: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rows, label in ((naive, "naive: z ~ P(z)"), (importance, "importance: z ~ Q(z|X)")):
        ax.errorbar([r["samples"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r["mc_se"] for r in rows], marker="o", capsize=3, label=label)
    ax.axhline(importance[-1]["mean"], color="grey", ls=":", lw=1,
               label=f"importance, k = {importance[-1]['samples']}")
    ax.set_xscale("log")
    ax.set_xlabel("samples per image")
    ax.set_ylabel("estimate of log P(X), nats per image")
    ax.set_title(f"{config.dataset}, z_dim {config.z_dim}: mean over {images} test images "
                 "(+- Monte-Carlo s.e.)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, out)


if __name__ == "__main__":
    main()
