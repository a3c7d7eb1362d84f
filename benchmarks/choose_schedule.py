"""Choose a row's budget schedule on a validation split: short pilot runs, scored on images
held out of training, never on the test set.

    python benchmarks/choose_schedule.py --data-dir ../shared/data --row vae-k1 \\
        --pilot-minutes 6 --validation 2000 \\
        --pilots 128:1e-3:1e-4 128:3e-3:3e-5 256:2e-3:1e-4 64:1e-3:1e-4 \\
        [--final-minutes 60] [--compile inductor] [--ema-decay D] [--kl-warmup N] \\
        [--out runs/pilots]

Each pilot ``BATCH:LR:LR_END`` trains the row (``benchmarks/reproduce_iwae.py``'s
``train_row``: same model, data, binarisation and checkpoints) under the budget schedule of
``--pilot-minutes`` minutes, batch BATCH, learning rate LR decayed exponentially to LR_END
over those minutes, on the training images less ``--validation`` N held out (the same fixed
subset that ``reproduce_iwae.py --validation N`` holds out). Every pilot is trained before
any is scored, so scoring never shares the cores of a timed pilot. Each is then scored by
its IS NLL on the held-out images (``--validation-k`` draws from the guide, seed 0; with
``--ema-decay``, the better of its trained and averaged weights). The table gives each
pilot's validation NLL and its paired difference from the best pilot on the same images,
whose standard error is far smaller than either NLL's own. It is printed and written to
``OUT/pilots.md`` (and ``OUT/pilots.json``).

The best pilot's schedule, stretched to ``--final-minutes`` M (60 unless given), is printed as the
``reproduce_iwae.py`` command that trains the row with it (and the same held-out images,
from which its trained or averaged weights are chosen); with ``--final-minutes`` it is run,
into ``OUT/final``. Pilots resume from their checkpoints, and scores are kept in
``OUT/PILOT/validation.pt``, so the command can be run again after a crash.

A pilot of a few minutes is a proxy: at the final budget the order of close schedules may
differ. Pilots as long as the final run remove that doubt at the cost of their time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import reproduce_iwae  # noqa: E402
from benchmarks.iwae_table import ROWS  # noqa: E402
from pyrovae import load_dataset  # noqa: E402
from pyrovae.inference.statistics import standard_error  # noqa: E402
from pyrovae.runs.folders import atomic_write, write_json  # noqa: E402
from pyrovae.training.trainer import resolve_device  # noqa: E402


def parse_pilot(text: str) -> tuple[int, float, float]:
    """``"128:1e-3:1e-4"`` -> ``(128, 0.001, 0.0001)``; ``argparse`` errors otherwise."""
    try:
        batch, lr, lr_end = text.split(":")
        pilot = int(batch), float(lr), float(lr_end)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a pilot is BATCH:LR:LR_END, e.g. 128:1e-3:1e-4; got {text!r}") from None
    if pilot[0] < 1 or not (pilot[1] > 0 and pilot[2] > 0):
        raise argparse.ArgumentTypeError(f"a pilot needs batch >= 1 and learning rates > 0; "
                                         f"got {text!r}")
    return pilot


def pilot_name(pilot: tuple[int, float, float]) -> str:
    """The pilot's folder name: ``b128-lr0.001-0.0001``."""
    return f"b{pilot[0]}-lr{pilot[1]:g}-{pilot[2]:g}"


def score_pilot(trainer, record: dict, validation: torch.Tensor, k: int, chunk: int,
                folder: Path) -> dict:
    """The pilot's validation score (its better weights), kept in ``folder/validation.pt``
    and reused while the pilot's epochs, k and images are the same: ``{"weights", "nll",
    "nll_se", "per_image", ...}``."""
    path = folder / "validation.pt"
    key = {"epochs": record["epochs"], "k": k, "n_validation": len(validation)}
    if path.exists():
        kept = torch.load(path, weights_only=False)
        if kept["key"] == key:
            return kept["score"]
    found = reproduce_iwae.score_weights(trainer, validation, k, chunk)
    weights = max(found, key=lambda w: found[w].mean)
    score = {"weights": weights, "nll": -found[weights].mean, "nll_se": found[weights].se,
             "per_image": -found[weights].per_datum.cpu(), "epochs": record["epochs"],
             "seconds_per_epoch": record["train_seconds"] / max(record["epochs"], 1)}
    atomic_write(path, lambda f: torch.save({"key": key, "score": score}, f))
    return score


def pilot_table(rows: list[dict]) -> str:
    """Markdown: one line per pilot, its validation NLL and its paired difference from the
    best (the lowest NLL) on the same images; the best in bold."""
    best = min(rows, key=lambda r: r["nll"])
    lines = ["| batch | lr -> lr_end | epochs | s / epoch | weights | validation NLL | "
             "minus the best (paired) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["per_image"] - best["per_image"]
        nll = f"{r['nll']:.2f} ± {r['nll_se']:.2f}"
        lines.append(f"| {r['batch']} | {r['lr']:g} -> {r['lr_end']:g} | {r['epochs']} | "
                     f"{r['seconds_per_epoch']:.2f} | {r['weights']} | "
                     f"{f'**{nll}**' if r is best else nll} | "
                     f"{float(d.mean()):+.2f} ± {standard_error(d):.2f} |")
    return "\n".join(lines)


def final_command(args, best: dict) -> list[str]:
    """``reproduce_iwae.py``'s arguments for the row with the best pilot's schedule."""
    command = ["--rows", args.row, "--budget-minutes", f"{args.final_minutes or 60:g}",
               "--batch-size", str(best["batch"]), "--lr", f"{best['lr']:g}",
               "--lr-end", f"{best['lr_end']:g}", "--validation", str(args.validation),
               "--validation-k", str(args.validation_k), "--compile", args.compile,
               "--device", args.device, "--out", str(args.out / "final")]
    if args.data_dir:
        command = ["--data-dir", args.data_dir, *command]
    if args.ema_decay is not None:
        command += ["--ema-decay", f"{args.ema_decay:g}"]
    if args.kl_warmup:
        command += ["--kl-warmup", str(args.kl_warmup)]
    for flag in ("train_limit", "test_limit"):  # smoke tests
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return command


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--row", default="vae-k1", choices=ROWS)
    parser.add_argument("--pilots", nargs="+", type=parse_pilot, required=True,
                        metavar="BATCH:LR:LR_END")
    parser.add_argument("--pilot-minutes", type=float, default=6.0)
    parser.add_argument("--validation", type=int, default=2000,
                        help="training images held out to score the pilots")
    parser.add_argument("--validation-k", type=int, default=1000, help="IS draws per image")
    parser.add_argument("--chunk", type=int, default=500, help="IS draws per pass")
    parser.add_argument("--final-minutes", type=float, default=None,
                        help="then train the row for M minutes with the best schedule")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ema-decay", type=float, default=None)
    parser.add_argument("--kl-warmup", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/pilots"))
    parser.add_argument("--train-limit", type=int, default=None, help="smoke tests only")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="smoke tests only: passed to the final run")
    args = parser.parse_args(argv)
    if len(set(args.pilots)) != len(args.pilots):
        parser.error("the same pilot is named twice")
    device = resolve_device(args.device)
    train = load_dataset("mnist", args.data_dir).train_x[:args.train_limit]
    if not 0 < args.validation < len(train):
        parser.error(f"--validation must be in 1..{len(train) - 1}, got {args.validation}")
    train, held_out = reproduce_iwae.split_validation(train, args.validation)
    row = ROWS[args.row]
    validation = reproduce_iwae.scored(row, held_out.to(device), seed=2)  # as reproduce_iwae
    train = train.to(device)
    trained = {}
    for pilot in args.pilots:  # every pilot trained before any is scored
        schedule = reproduce_iwae.BudgetSchedule(args.pilot_minutes, *pilot)
        folder = args.out / pilot_name(pilot)
        trained[pilot] = reproduce_iwae.train_row(args.row, schedule, train, folder / args.row,
                                                  device, args.compile, args.ema_decay,
                                                  args.kl_warmup)
    rows = []
    for pilot, (trainer, record) in trained.items():
        score = score_pilot(trainer, record, validation, args.validation_k, args.chunk,
                            args.out / pilot_name(pilot))
        rows.append({"batch": pilot[0], "lr": pilot[1], "lr_end": pilot[2], **score})
    text = (f"{args.row}, pilots of {args.pilot_minutes:g} min; validation NLL: IS-"
            f"{args.validation_k} on {args.validation} held-out training images\n\n"
            + pilot_table(rows))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "pilots.md", lambda f: f.write((text + "\n").encode()))
    write_json(args.out / "pilots.json", [{k: v for k, v in r.items() if k != "per_image"}
                                          for r in rows])
    best = min(rows, key=lambda r: r["nll"])
    command = final_command(args, best)
    print("best schedule: python benchmarks/reproduce_iwae.py " + " ".join(command))
    if args.final_minutes is not None:
        reproduce_iwae.main(command)
    return rows


if __name__ == "__main__":
    main()
