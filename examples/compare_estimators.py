"""Train one model with trace, analytic, IWAE and IWAE-DReG; compare bounds, NLL, time and SNR.

    python examples/compare_estimators.py [--dataset digits] [--epochs 30] [--nll-samples 5000]
                                          [--snr-particles 1 5 25 100] [--out compare.png]

The same VAE (same initial weights, Bernoulli likelihood on statically binarised images) is
trained with each estimator for the same number of steps: ``trace``, ``analytic``, ``iwae``
and ``iwae_dreg`` at K = 5 and 50. Table: test ELBO (analytic KL, one draw per image), test
NLL by importance sampling (k = --nll-samples, with its s.e. across images) and training wall
time. Then, on the ``trace`` model and one test batch, the signal-to-noise ratio of the
guide's (encoder's) and the model's (decoder's) gradient as K grows, for ``iwae`` against
``iwae_dreg``: Rainforth et al. (2018) show that IWAE's encoder SNR falls like 1/sqrt(K)
while the decoder's rises; Tucker et al. (2019) that DReG removes the fall. A few minutes on
2 CPU cores with the defaults (digits).
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

from pyrovae import VAE, Trainer, binarize, evaluate_elbo, load_dataset  # noqa: E402
from pyrovae.inference.compare import EstimatorSpec, compare_estimators  # noqa: E402
from pyrovae.inference.evaluation import log_likelihood  # noqa: E402
from pyrovae.runs.plots import save_figure as save  # noqa: E402

TRAINED = ["trace", "analytic", "iwae:5", "iwae:50", "iwae_dreg:5", "iwae_dreg:50"]


def load(args):
    data = load_dataset(args.dataset, args.data_dir)
    train = binarize(data.train_x[:args.train_limit], "static", seed=0)
    return train, binarize(data.test_x[:args.test_limit], "static", seed=1)


def train_one(spec: EstimatorSpec, train, test, args) -> tuple[VAE, dict]:
    pyro.set_rng_seed(args.seed)  # the same initial weights for every estimator
    vae = VAE(train.shape[1:], z_dim=args.z_dim, hidden=args.hidden, likelihood="bernoulli")
    trainer = Trainer(vae, spec.build(), lr=args.lr)
    start = time.perf_counter()
    trainer.fit(train, args.epochs, args.batch_size)
    seconds = time.perf_counter() - start
    pyro.set_rng_seed(args.seed + 1)
    nll = log_likelihood(vae, test, args.nll_samples, chunk=args.chunk)
    return vae, {"estimator": spec.label, "steps": args.epochs * (len(train) // args.batch_size),
                 "test_elbo": evaluate_elbo(vae, test, estimator="analytic"),
                 "test_nll": -nll.mean, "nll_se": nll.se, "seconds": seconds}


def snr_by_particles(vae, batch, particles: list[int], repeats: int) -> list[dict]:
    """Encoder and decoder gradient SNR of iwae and iwae_dreg for each K."""
    specs = [EstimatorSpec(name, k) for k in particles for name in ("iwae", "iwae_dreg")]
    rows = compare_estimators(vae, batch, specs, repeats)
    return [{"K": row["particles"], "estimator": row["estimator"].split(":")[0],
             "encoder_snr": row["encoder_snr"], "decoder_snr": row["decoder_snr"]}
            for row in rows]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-limit", type=int, default=None, help="first N train images")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200])
    parser.add_argument("--nll-samples", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--snr-particles", type=int, nargs="+", default=[1, 5, 25, 100])
    parser.add_argument("--snr-repeats", type=int, default=100)
    parser.add_argument("--snr-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="compare_estimators.png")
    args = parser.parse_args(argv)
    train, test = load(args)
    models, rows = {}, []
    for text in TRAINED:
        spec = EstimatorSpec.parse(text)
        models[spec.label], row = train_one(spec, train, test, args)
        rows.append(row)
    print(f"{args.dataset}: {len(train)} train / {len(test)} test images, z_dim {args.z_dim}, "
          f"hidden {args.hidden}, {rows[0]['steps']} steps of {args.batch_size} for each\n")
    print(f"{'estimator':<14}{'test ELBO':>11}{'test NLL':>11}{'s.e.':>7}{'train s':>9}")
    for r in rows:
        print(f"{r['estimator']:<14}{r['test_elbo']:>11.2f}{r['test_nll']:>11.2f}"
              f"{r['nll_se']:>7.2f}{r['seconds']:>9.1f}")
    print(f"(nats per image; NLL by importance sampling, k = {args.nll_samples}, s.e. across "
          "test images)\n")
    pyro.set_rng_seed(args.seed + 2)
    snr = snr_by_particles(models["trace:1"], test[:args.snr_batch], args.snr_particles,
                           args.snr_repeats)
    print(f"gradient SNR on the trace model, {args.snr_batch} test images, {args.snr_repeats} "
          "repeats (mean over parameters of |mean| / sd)")
    print(f"{'K':>5}{'iwae enc':>10}{'dreg enc':>10}{'iwae dec':>10}{'dreg dec':>10}")
    for k in args.snr_particles:
        pair = {r["estimator"]: r for r in snr if r["K"] == k}
        print(f"{k:>5}{pair['iwae']['encoder_snr']:>10.3f}{pair['iwae_dreg']['encoder_snr']:>10.3f}"
              f"{pair['iwae']['decoder_snr']:>10.3f}{pair['iwae_dreg']['decoder_snr']:>10.3f}")
    plot(snr, args.out)
    print(f"wrote {args.out}")
    return {"models": rows, "snr": snr}


def plot(snr: list[dict], out: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, part in zip(axes, ("encoder", "decoder")):
        for name in ("iwae", "iwae_dreg"):
            rows = [r for r in snr if r["estimator"] == name]
            ax.plot([r["K"] for r in rows], [r[f"{part}_snr"] for r in rows], "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="particles K",
               title=f"{part} gradient SNR")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, out)


if __name__ == "__main__":
    main()
