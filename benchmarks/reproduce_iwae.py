"""Reproduce Table 1 of Burda, Grosse & Salakhutdinov (2015), *Importance Weighted
Autoencoders*, for one and two stochastic layers, with pyrovae's public API.

    python benchmarks/reproduce_iwae.py --data-dir ../shared/data --rows vae-k1 \\
        --budget-minutes 60 [--out runs/iwae] [--device auto]
    python benchmarks/reproduce_iwae.py --data-dir ../shared/data --rows iwae-k50 --schedule paper

Setting (the paper's): MNIST, 60,000 training images binarised afresh in every batch
(``dynamic_binarize``, on the device), the 10,000 test images binarised once (seed 1); encoder
and decoder with two hidden layers of 200 tanh units, 50 latent units, Bernoulli likelihood,
N(0, I) prior; Adam (0.9, 0.999, eps 1e-4). Rows: ``vae-kK`` trains ``trace`` with K particles
(the ELBO averaged over K), ``iwae-kK`` the K-sample bound (``iwae``); ``iwae-k1`` is
``vae-k1``. The rows ``vae2-kK`` and ``iwae2-kK`` are the paper's two-stochastic-layer model
(:class:`~pyrovae.models.hvae.HierarchicalVAE`): 784-[100-100]-100 stochastic-[50-50]-50
stochastic, tanh, the same data, schedules and evaluation. Every row also reports Burda's
active units (Cov_X(E_Q[u|X]) > 0.01) per latent layer. Rows past the paper: ``dreg-k50``
(``iwae_dreg``), ``vamp-iwae-k50`` (VampPrior), ``flow-iwae-k50`` (IAF guide);
``conv-vae-k1``, the one-layer VAE with convolutional networks (``--network conv``: two
down-sampling blocks of 32 and 64 channels, then 200 tanh units, each way) in place of the
MLPs; ``dlogistic-vae-k1``, the one-layer VAE on the 8-bit images themselves (not binarised)
with the discretised logistic likelihood (5 components), its NLL also in bits/dim.

Schedules:

* ``--schedule paper``: batch 20; 3^i epochs at learning rate 1e-3 * 10^(-i/7), i = 0..7
  (3,280 epochs).
* ``--budget-minutes M``: batch ``--batch-size`` (128), learning rate decayed exponentially
  from ``--lr`` (1e-3) to ``--lr-end`` (1e-4) as training time goes from 0 to M minutes
  (set before every epoch, from the training time so far); training stops when M minutes
  of training are spent. Evaluation time is not counted.

KL warm-up (past the paper): ``--kl-warmup N`` trains epoch e with the KL weighted by
min(1, (e - 1) / N) (Sønderby et al. 2016), against the collapse of upper latent layers.

Polyak averaging and a validation split (past the paper): ``--ema-decay D`` keeps an
exponential moving average of the weights (decay D per step) beside the trained ones;
``--validation N`` holds N training images out of training (a fixed random subset; for the
Bernoulli rows binarised once, seed 2). With both, the weights to evaluate (trained or
averaged) are chosen by their validation NLL (IS with ``--validation-k`` draws), and only the
chosen ones are evaluated on the test set; ``result.json`` records both validation NLLs and
the choice.

Each row keeps ``OUT/ROW/checkpoint.pt`` (written after every epoch, atomically) and continues
from it when run again with the same schedule; its result goes to ``OUT/ROW/result.json``.
The test negative log-likelihood is estimated by importance sampling from the guide with
k = ``--nll-k`` (5,000) draws per image, with its standard error over the test images:
all 10,000 of them, or with ``--test-subset N`` a fixed random N (seed 0), for rows too slow
to score in full (a conv decoder costs about 11 times the MLP's per draw on a CPU). Each
row's per-image NLLs go to ``OUT/ROW/nll_per_image.pt``, and rows scored on the same images
are compared by their paired difference (printed below the table), whose s.e. is much
smaller than either row's own. Every row is trained before any is evaluated (so evaluation
never shares the cores of a timed training run); ``--train-only`` stops there.
The table of every finished row under OUT is printed beside the paper's numbers and, with
``--docs PATH``, written into PATH between the markers ``<!-- iwae-table -->`` and
``<!-- /iwae-table -->``, keeping the rows already there that OUT does not have.
``OUT/curves.png`` plots each row's train ELBO against training time (with ``--docs``, also
``images/iwae_curves.png`` beside PATH), for rows trained from epoch 1 by this version of
the script.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyro
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.iwae_table import ROWS, Row, device_label, table, write_docs  # noqa: E402
from pyrovae import VAE, Trainer, binarize, evaluate_elbo, load_dataset, log_likelihood  # noqa: E402
from pyrovae.components.conv import ConvDecoder, ConvEncoder  # noqa: E402
from pyrovae.components.likelihoods import build_likelihood  # noqa: E402
from pyrovae.inference.active_units import active_units  # noqa: E402
from pyrovae.inference.statistics import standard_error  # noqa: E402
from pyrovae.models.hvae import HierarchicalVAE  # noqa: E402
from pyrovae.runs.folders import atomic_write, environment, write_json  # noqa: E402
from pyrovae.runs.plots import plot_elbo_by_time  # noqa: E402
from pyrovae.training.trainer import resolve_device  # noqa: E402

HIDDEN, Z_DIM, ADAM_EPS, IMAGE = (200, 200), 50, 1e-4, (1, 28, 28)
LATENT2, HIDDEN2 = (100, 50), ((100, 100), (50, 50))  # the two-stochastic-layer model
PAPER_BATCH, PAPER_STAGES = 20, 8


CHANNELS, CONV_HIDDEN = (32, 64), (200,)  # the conv row's blocks and fully connected widths
PER_IMAGE = "nll_per_image.pt"  # a row's test NLL per image, with the images' indices


def paper_stages() -> list[tuple[int, float]]:
    """The paper's schedule: (epochs, learning rate) for i = 0..7."""
    return [(3 ** i, 1e-3 * 10 ** (-i / 7)) for i in range(PAPER_STAGES)]


class PaperSchedule:
    """Learning rate by epoch; done after sum 3^i = 3,280 epochs."""

    def __init__(self):
        self.ends = []  # (last epoch of the stage, lr)
        total = 0
        for epochs, lr in paper_stages():
            total += epochs
            self.ends.append((total, lr))
        self.batch_size = PAPER_BATCH

    def describe(self) -> str:
        return "paper: batch 20, 3^i epochs at lr 1e-3*10^(-i/7), i=0..7 (3,280 epochs)"

    def lr(self, epoch: int, seconds: float) -> float | None:
        """Learning rate of epoch ``epoch`` (1-based), or ``None`` when training is done."""
        return next((lr for end, lr in self.ends if epoch <= end), None)


class BudgetSchedule:
    """Exponential decay from ``lr`` to ``lr_end`` over ``minutes`` of training time."""

    def __init__(self, minutes: float, batch_size: int, lr: float, lr_end: float):
        if not minutes > 0:
            raise SystemExit(f"--budget-minutes must be > 0, got {minutes}")
        self.seconds, self.batch_size = 60.0 * minutes, batch_size
        self.lr0, self.lr1 = lr, lr_end

    def describe(self) -> str:
        return (f"budget: {self.seconds / 60:g} min, batch {self.batch_size}, lr {self.lr0:g} "
                f"-> {self.lr1:g} exponential in training time")

    def lr(self, epoch: int, seconds: float) -> float | None:
        if seconds >= self.seconds:
            return None
        return self.lr0 * (self.lr1 / self.lr0) ** (seconds / self.seconds)


def build_model(row: Row, device: torch.device) -> VAE | HierarchicalVAE:
    if row.layers == 2:
        return HierarchicalVAE((1, 28, 28), LATENT2, HIDDEN2, activation="tanh",
                               likelihood="bernoulli", prior=row.prior,
                               guide=row.guide).to(device)
    networks = {}
    if row.network == "conv":
        likelihood = build_likelihood(row.likelihood)
        networks = {"encoder": ConvEncoder(IMAGE, CHANNELS, CONV_HIDDEN, Z_DIM, "tanh"),
                    "decoder": ConvDecoder(Z_DIM, IMAGE, CHANNELS, CONV_HIDDEN,
                                           likelihood.params_per_value, "tanh")}
    return VAE(IMAGE, Z_DIM, HIDDEN, activation="tanh", likelihood=row.likelihood,
               prior=row.prior, guide=row.guide, **networks).to(device)


def train_row(name: str, schedule, train: torch.Tensor, folder: Path,
              device: torch.device, compile: str = "auto",
              ema_decay: float | None = None, kl_warmup: int = 0) -> tuple[Trainer, dict]:
    """Train (or continue) row ``name``; returns its trainer and its training record."""
    row = ROWS[name]
    pyro.set_rng_seed(0)
    vae = build_model(row, device)
    # a step with a NaN loss or gradient is undone and counted, not fatal: rows run unattended
    trainer = Trainer(vae, row.estimator, particles=row.particles, adam_eps=ADAM_EPS,
                      lr=1e-3, on_nan="skip", compile=compile, ema_decay=ema_decay,
                      kl_warmup=kl_warmup)
    checkpoint = folder / "checkpoint.pt"
    record = {"row": name, "schedule": schedule.describe(), "train_seconds": 0.0, "steps": 0,
              "epochs": 0, "n_train": len(train), "ema_decay": ema_decay,
              "kl_warmup": kl_warmup}
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["record"]["schedule"] != record["schedule"]:
            raise SystemExit(f"{checkpoint} was trained with schedule "
                             f"{state['record']['schedule']!r}, not {record['schedule']!r}; "
                             "pass the same schedule, or another --out")
        if state["record"].get("n_train", len(train)) != len(train):
            raise SystemExit(f"{checkpoint} was trained on {state['record']['n_train']} "
                             f"images, not {len(train)}; pass the same --train-limit and "
                             "--validation")
        for flag, value in (("ema_decay", ema_decay), ("kl_warmup", kl_warmup)):
            saved = state["record"].get(flag, 0 if flag == "kl_warmup" else None)
            if saved != value:
                raise SystemExit(f"{checkpoint} was trained with --{flag.replace('_', '-')} "
                                 f"{saved}, not {value}; pass the same, or another --out")
        trainer.load_state_dict(state["trainer"])
        record = state["record"]
        print(f"{name}: continuing from epoch {trainer.epoch} "
              f"({record['train_seconds'] / 60:.1f} min trained)", flush=True)
    record["compile"] = compile  # the step's mode (trace replays the eager step exactly)
    steps_per_epoch = len(train) // schedule.batch_size
    bar = tqdm(desc=name, unit="epoch", initial=trainer.epoch, file=sys.stdout,
               mininterval=10.0)
    while (lr := schedule.lr(trainer.epoch + 1, record["train_seconds"])) is not None:
        trainer.set_lr(lr)
        start = time.perf_counter()
        history = trainer.fit(train, trainer.epoch + 1, schedule.batch_size,
                              dynamic_binarize=row.binarised, progress=False)
        record["train_seconds"] += time.perf_counter() - start
        record["steps"] += steps_per_epoch
        record["epochs"] = trainer.epoch
        record["train_elbo"] = history[-1]["train_elbo"]
        record["skipped_steps"] = record.get("skipped_steps", 0) + \
            history[-1].get("skipped_steps", 0)
        if trainer.epoch == 1:  # a row resumed from an older checkpoint has no curve
            record["curve"] = []
        if "curve" in record:
            record["curve"].append({"epoch": trainer.epoch, "lr": lr,
                                    "minutes": record["train_seconds"] / 60,
                                    "train_elbo": record["train_elbo"]})
        state = {"trainer": trainer.state_dict(), "record": record}
        atomic_write(checkpoint, lambda f, state=state: torch.save(state, f))
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.2e}", elbo=f"{record['train_elbo']:.2f}",
                        minutes=f"{record['train_seconds'] / 60:.1f}")
    bar.close()
    return trainer, record


def split_validation(train: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(the rest, n held-out images)`` of ``train`` ``(N, ...)``: a fixed random subset
    (seed 0), the same for every row and run; the rest keep their order."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train[order[n:].sort().values], train[order[:n]]


def scored(row: Row, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The images a row is evaluated on: binarised once (``seed``) for the Bernoulli rows,
    the 8-bit images themselves for the others."""
    return binarize(images, "static", seed=seed) if row.binarised else images


def nll_estimate(vae, images: torch.Tensor, k: int, chunk: int, seed: int):
    """IS estimate of log P(X) on ``images`` from the guide, ``k`` draws per image drawn from
    ``seed`` (so a score does not depend on what ran before it): a
    :class:`~pyrovae.inference.evaluation.LogLikelihood` (``-mean`` is the NLL)."""
    vae.eval()
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return log_likelihood(vae, images, samples=k, chunk=min(chunk, k))


def score_weights(trainer: Trainer, images: torch.Tensor, k: int, chunk: int) -> dict:
    """``{"trained": estimate[, "averaged": estimate]}``: the IS estimate (``k`` draws, seed
    0) on ``images`` of the trained weights and, when the trainer keeps one, of their
    average; each printed."""
    found = {}
    weights = [("trained", contextlib.nullcontext())] + \
        ([("averaged", trainer.averaged())] if trainer.average is not None else [])
    for name, context in weights:
        with context:
            found[name] = estimate = nll_estimate(trainer.vae, images, k, chunk, seed=0)
        print(f"validation NLL, {name} weights: {-estimate.mean:.2f} ± {estimate.se:.2f} "
              f"(k={k}, {len(images)} images)", flush=True)
    return found


def choose_weights(trainer: Trainer, validation: torch.Tensor | None, k: int,
                   chunk: int) -> tuple[contextlib.AbstractContextManager, dict]:
    """The weights to evaluate: the trained ones, or, with an average of the weights, the
    ones with the lower validation NLL (IS, ``k`` draws; both NLLs are recorded)."""
    if trainer.average is None:
        return contextlib.nullcontext(), {"weights": "trained"}
    if validation is None:
        return trainer.averaged(), {"weights": "averaged (no validation split to choose)"}
    found = {name: {"validation_nll": -e.mean, "validation_nll_se": e.se}
             for name, e in score_weights(trainer, validation, k, chunk).items()}
    best = min(found, key=lambda w: found[w]["validation_nll"])
    context = trainer.averaged() if best == "averaged" else contextlib.nullcontext()
    return context, {"weights": best, "validation": found, "validation_k": k,
                     "n_validation": len(validation)}


def evaluate_row(vae: VAE, test: torch.Tensor, k: int, chunk: int
                 ) -> tuple[dict, torch.Tensor]:
    """Test NLL (IS from the guide, k draws) and the one-sample test ELBO, nats per image;
    and the ``(N,)`` float64 NLL of each test image. The draws start from seed 1, so a row
    scores the same whichever rows were trained or scored before it in the process."""
    start = time.perf_counter()
    estimate = nll_estimate(vae, test, k, chunk, seed=1)
    with torch.no_grad():
        elbo = evaluate_elbo(vae, test)
    return {"nll": -estimate.mean, "nll_se": estimate.se, "nll_mc_se": estimate.mc_se,
            "nll_k": k, "nll_ess": estimate.ess, "test_elbo": elbo, "n_test": len(test),
            **count_active_units(vae, test), "eval_seconds": time.perf_counter() - start
            }, -estimate.per_datum.cpu()


def paired_differences(out: Path, names: list[str]) -> list[str]:
    """``conv-vae-k1 - vae-k1: -1.23 ± 0.10 nats (paired, 1000 test images)`` for each pair
    of rows under ``out`` scored on the same test images of the same kind (binarised or
    8-bit): the mean of the per-image NLL differences and its s.e., which is far smaller
    than either row's own s.e. when the rows err alike on the same images."""
    scores = {}
    for name in sorted(names, key=list(ROWS).index):
        path = out / name / PER_IMAGE
        if path.exists():
            scores[name] = torch.load(path, weights_only=True)
    lines = []
    for a, b in itertools.combinations(scores, 2):
        same = ROWS[a].binarised == ROWS[b].binarised and torch.equal(
            scores[a]["test_indices"], scores[b]["test_indices"])
        if same:
            d = scores[b]["nll"] - scores[a]["nll"]
            lines.append(f"{b} - {a}: {float(d.mean()):+.2f} ± {standard_error(d):.2f} nats "
                         f"(paired, {len(d)} test images)")
    return lines


def count_active_units(vae, test: torch.Tensor) -> dict:
    """Burda's active units per latent layer (Cov_X(E_Q[u|X]) > 0.01) on the test images."""
    vae.eval()
    pyro.set_rng_seed(0)
    activity, draws = active_units(vae, test)
    return {"active_units": {site: a.active for site, a in activity.items()},
            "active_units_draws": draws}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--rows", nargs="+", default=["vae-k1"], choices=ROWS)
    parser.add_argument("--schedule", choices=["paper", "budget"], default=None,
                        help="default: budget when --budget-minutes is given, else paper")
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=128, help="budget schedule only")
    parser.add_argument("--lr", type=float, default=1e-3, help="budget schedule: first lr")
    parser.add_argument("--lr-end", type=float, default=1e-4, help="budget schedule: last lr")
    parser.add_argument("--nll-k", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=500, help="IS draws per pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto",
                        choices=["auto", "none", "graph", "trace", "inductor"],
                        help="the Trainer's compile mode; auto decides per epoch (one fit "
                        "call each), so a CPU epoch under 500 steps stays eager: pass trace "
                        "to record the step once and replay it")
    parser.add_argument("--out", type=Path, default=Path("runs/iwae"))
    parser.add_argument("--docs", type=Path, default=None,
                        help="markdown file whose iwae-table block gets the table")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="keep a Polyak (EMA) average of the weights, e.g. 0.999")
    parser.add_argument("--kl-warmup", type=int, default=0,
                        help="epochs N of linear KL warm-up (0 to 1 over epochs 1..N+1)")
    parser.add_argument("--validation", type=int, default=0,
                        help="training images held out to choose the weights (with "
                        "--ema-decay)")
    parser.add_argument("--validation-k", type=int, default=1000,
                        help="IS draws per validation image")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="evaluate on a fixed random N of the test images (seed 0), for "
                        "rows too slow to score all 10,000 with k draws")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or continue) the rows and stop before evaluating them")
    parser.add_argument("--train-limit", type=int, default=None, help="smoke tests only")
    parser.add_argument("--test-limit", type=int, default=None, help="smoke tests only")
    args = parser.parse_args(argv)
    schedule_name = args.schedule or ("budget" if args.budget_minutes else "paper")
    if schedule_name == "budget":
        if args.budget_minutes is None:
            parser.error("--schedule budget needs --budget-minutes")
        schedule = BudgetSchedule(args.budget_minutes, args.batch_size, args.lr, args.lr_end)
    else:
        schedule = PaperSchedule()
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_dir)
    train = data.train_x[:args.train_limit]
    held_out = None
    if args.validation:
        if not 0 < args.validation < len(train):
            parser.error(f"--validation must be in 1..{len(train) - 1}, got {args.validation}")
        train, held_out = split_validation(train, args.validation)
        held_out = held_out.to(device)
    train = train.to(device)
    test_images = data.test_x[:args.test_limit]
    test_indices = torch.arange(len(test_images))
    if args.test_subset is not None:
        if not 0 < args.test_subset <= len(test_images):
            parser.error(f"--test-subset must be in 1..{len(test_images)}, "
                         f"got {args.test_subset}")
        test_indices = torch.randperm(len(test_images), generator=torch.Generator()
                                      .manual_seed(0))[:args.test_subset].sort().values
    test_images = test_images[test_indices].to(device)
    env = environment(device)
    # every row is trained before any is evaluated, so no evaluation shares the timed cores
    trained = {name: train_row(name, schedule, train, args.out / name, device, args.compile,
                               args.ema_decay, args.kl_warmup) for name in args.rows}
    if args.train_only:
        print("trained; run the same command without --train-only to evaluate", flush=True)
        return []
    for name, (trainer, record) in trained.items():
        row = ROWS[name]
        test = scored(row, test_images, seed=1)
        validation = None if held_out is None else scored(row, held_out, seed=2)
        folder = args.out / name
        vae = trainer.vae
        done = folder / "result.json"
        previous = json.loads(done.read_text()) if done.exists() else {}
        if (previous.get("epochs"), previous.get("nll_k"), previous.get("n_test"),
                previous.get("test_subset")) == (record["epochs"], args.nll_k, len(test),
                                                 args.test_subset):
            if "active_units" not in previous:  # evaluated before the count existed
                write_json(done, {**previous, **count_active_units(vae, test)})
            print(f"{name}: already evaluated at epoch {record['epochs']} ({done})")
            continue
        weights, choice = choose_weights(trainer, validation, args.validation_k, args.chunk)
        with weights:
            evaluation, per_image = evaluate_row(vae, test, args.nll_k, args.chunk)
            result = {**record, **choice, **evaluation, "test_subset": args.test_subset,
                      "device": device_label(env), "row_spec": asdict(ROWS[name])}
        if not row.binarised:  # a probability of the 8-bit image: bits/dim mean the usual
            result["bits_per_dim"] = result["nll"] / (test[0].numel() * math.log(2))
            result["bits_per_dim_se"] = result["nll_se"] / (test[0].numel() * math.log(2))
        scores = {"test_indices": test_indices, "nll": per_image}
        atomic_write(folder / PER_IMAGE, lambda f, scores=scores: torch.save(scores, f))
        write_json(folder / "result.json", result)
        paper = ROWS[name].paper
        print(f"{name}: test NLL {result['nll']:.2f} ± {result['nll_se']:.2f} nats "
              f"(k={args.nll_k}, {len(test)} test images; paper "
              f"{paper if paper is not None else '-'}), "
              f"{record['epochs']} epochs in {record['train_seconds'] / 60:.1f} min", flush=True)
    results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*/result.json"))
               if p.parent.name in ROWS]
    text = table(results)
    print(text)
    for line in paired_differences(args.out, [r["row"] for r in results]):
        print(line)
    curves = {r["row"]: r["curve"] for r in results if r.get("curve")}
    if curves:
        figures = [args.out / "curves.png"] + \
            ([args.docs.parent / "images" / "iwae_curves.png"] if args.docs else [])
        for figure in figures:
            plot_elbo_by_time(curves, figure)
            print(f"figure: {figure}")
    if args.docs:
        write_docs(args.docs, text)
    return results


if __name__ == "__main__":
    main()
