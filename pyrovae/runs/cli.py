"""The ``pyrovae`` command: ``train``, ``sample``, ``evaluate``, ``check-kl``, ``compare``,
``runs``, ``plot``.

``train``'s flags are generated from :class:`pyrovae.runs.config.TrainConfig` (one flag per field,
its help from the field's metadata). Bad input prints one line naming the argument, the value
seen and what is allowed, and exits with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import types
import typing
from pathlib import Path

from pyrovae.components.files import is_file_dataset
from pyrovae.components.validation import check_seed
from pyrovae.runs.config import CONFIG_FIELDS, TrainConfig, migrate
from pyrovae.training.distributed import RankFailure
from pyrovae.training.trainer import NonFiniteLossError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for name, f in CONFIG_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata["help"]
        if "choices" in f.metadata:
            help_text += f" {{{', '.join(f.metadata['choices']())}}}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text += f" (default: {default})"
        kind = hints[name]
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
            continue
        if typing.get_origin(kind) is dict:
            parser.add_argument(flag, type=_key_value, nargs="+", default=None,
                                help=help_text, metavar="KEY=VALUE")
            continue
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind) \
            if typing.get_origin(kind) in (typing.Union, types.UnionType) else kind
        element = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        base = _int_list if typing.get_origin(element) is list else \
            element if element in (int, float) else str
        extra = {"nargs": "+"} if typing.get_origin(kind) is list else {}
        parser.add_argument(flag, type=base, default=None, help=help_text,
                            metavar=name.upper(), **extra)


def _int_list(text: str) -> list[int]:
    """``"100,100"`` -> ``[100, 100]`` (one block's widths)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as "
                                         f"100,100; got {text!r}") from None


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE read as JSON, else the string itself)."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got "
                                         f"{text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyrovae", description="Variational autoencoders as Pyro "
                     "model/guide pairs, trained by SVI (Doersch's tutorial, in code).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a VAE into a run folder",
                                description="Train a VAE by SVI. Writes config.json, "
                                "metrics.jsonl, checkpoint.pt and figures/*.png into --out.")
    _add_config_flags(train)
    train.add_argument("--config", type=Path, help="JSON file of config fields; flags given "
                       "on the command line override it")
    train.add_argument("--out", type=Path, help="run folder (default: a new folder under "
                       "runs/)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from "
                       "its checkpoint, with its saved config (--epochs sets a new total, "
                       "--device and --dist-timeout may change; other flags must match)")
    train.add_argument("--force", action="store_true", help="overwrite the run files of an "
                       "existing --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                       help="write no TensorBoard events (written to RUN_DIR/tensorboard/ "
                       "when the tensorboard package is installed)")
    train.add_argument("--cvae-prior", dest="removed_cvae_prior", help=argparse.SUPPRESS)

    sample = commands.add_parser("sample", help="draw samples from a trained model")
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument("-n", "--n", type=int, default=None, help="number of samples "
                        "(default: 64); for a cvae run, draws per input (default: 6)")
    sample.add_argument("--given", choices=("test", "train"), help="cvae runs: complete the "
                        "first --rows inputs of this split; writes figures/completions.png "
                        "(and by_label.png for the label task)")
    sample.add_argument("--rows", type=int, default=8, help="cvae runs: inputs, one per row "
                        "(default: 8)")
    sample.add_argument("--out", type=Path, help="PNG path (default: "
                        "RUN_DIR/figures/samples.png); for a cvae run, a folder (default: "
                        "RUN_DIR/figures)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    evaluate = commands.add_parser("evaluate", help="test ELBO of a trained model; writes "
                                   "RUN_DIR/evaluation.json")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--batch-size", type=int, default=1000,
                          help="evaluation batch size (default: 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    evaluate.add_argument("--nll-samples", type=int, default=0, metavar="K",
                          help="also estimate the test NLL by importance sampling from Q with "
                          "K draws per image (the IWAE-K bound; e.g. 5000), with its standard "
                          "errors (default: 0, none)")
    evaluate.add_argument("--chunk", type=int, default=500, metavar="C",
                          help="draws per image and pass for --nll-samples; a pass scores at "
                          "most 16,384 (image, draw) pairs, so memory stays bounded "
                          "(default: 500)")
    evaluate.add_argument("--limit", type=int, metavar="N",
                          help="evaluate only the first N test images (default: all)")
    evaluate.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                          help="under torchrun (test images split over the ranks): seconds "
                          "a rank waits for the others (default: 600)")

    compare = commands.add_parser(
        "compare", help="ELBO estimators side by side on one test batch",
        description="For one batch of test images, R estimates per estimator: mean bound, "
        "its sd across repeats, gradient variance and signal-to-noise ratio for encoder and "
        "decoder parameters, time per step. Prints the table, writes RUN_DIR/compare.csv "
        "and RUN_DIR/figures/compare.png.")
    compare.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    compare.add_argument("--estimators", nargs="+", metavar="NAME[:K][+sf]",
                         help="estimators with K particles (+sf: score-function gradient); "
                         "default: every registered one (importance-weighted at K = 5 and 50)"
                         ", and trace+sf, iwae:5+sf")
    compare.add_argument("--repeats", type=int, default=50, help="estimates per estimator "
                         "(default: 50)")
    compare.add_argument("--batch-size", type=int, default=64,
                         help="test images in the batch (default: 64)")
    compare.add_argument("--alpha", type=float, help="renyi's order (default: the run's)")
    compare.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    compare.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")

    runs = commands.add_parser(
        "runs", help="a table of every run folder under some folders",
        description="One row per run folder found (recursively) under FOLDER: the config "
        "fields that differ between the runs, epochs, the last train/test bounds, the "
        "evaluated test ELBO, NLL and bits/dim (when pyrovae evaluate has run) and the "
        "training time. Damaged folders are named, the others still listed.")
    runs.add_argument("folders", type=Path, nargs="*", default=[Path("runs")],
                      metavar="FOLDER", help="where to look (default: runs)")
    runs.add_argument("--sort", metavar="COLUMN", help="sort by this column (ascending; "
                      "runs without a value last)")
    runs.add_argument("--reverse", action="store_true", help="sort descending")
    output = runs.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV instead of the table")
    output.add_argument("--json", action="store_true", help="print JSON instead of the table")

    plot = commands.add_parser(
        "plot", help="the curves of several runs on one figure",
        description="Test and train ELBO by epoch, and test ELBO by training time, of every "
        "run folder found (recursively) under FOLDER, each labelled by the config fields "
        "that differ between the runs.")
    plot.add_argument("folders", type=Path, nargs="+", metavar="FOLDER")
    plot.add_argument("--out", type=Path, required=True, help="the PNG to write")

    from pyrovae.inference.check_kl import RULE

    check = commands.add_parser(
        "check-kl", help="check the analytic-KL ELBO against Monte-Carlo Trace_ELBO",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RULE,
        description="On one batch, compare pyrovae's analytic-KL ELBO with Pyro's Monte-Carlo "
        "Trace_ELBO in value and in gradient, over N shared draws of z ~ Q(z|X). Without "
        "RUN_DIR: a freshly initialised model (default config) on data drawn from it.")
    check.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR",
                       help="run folder (its first test images, its particles)")
    check.add_argument("--batch-size", type=int, help="batch size (default: the config's)")
    check.add_argument("--draws", type=int, default=200,
                       help="number N of shared draws (default: 200)")
    check.add_argument("--alpha", type=float, default=1e-3, help="false-failure rate of "
                       "each of the value and gradient checks (default: 0.001)")
    check.add_argument("--json", type=Path, metavar="PATH",
                       help="also write the table as JSON to PATH ('-': to stdout, instead "
                       "of the table)")
    check.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    check.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from ``--config`` (if given) overridden by the flags that were given."""
    values = {}
    if args.config is not None:  # a run's config.json of any version: brought up to date first
        values = json.loads(args.config.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object")
        values = migrate(values)
    given = _given_fields(args)
    if "model_options" in given:  # KEY=VALUE pairs, added to the --config file's
        given["model_options"] = {**values.get("model_options", {}), **given["model_options"]}
    values.update(given)
    return TrainConfig.from_dict(values)


def _given_fields(args: argparse.Namespace) -> dict:
    """The config fields given as flags, as the config holds them (lists of ``.py`` paths
    absolute; ``model_options`` a dict)."""
    given = {k: getattr(args, k) for k in CONFIG_FIELDS if getattr(args, k) is not None}
    for name in ("plugin", "model"):  # .py paths made absolute: later commands run elsewhere
        if name in given:
            given[name] = _absolute_py_paths(given[name])
    if is_file_dataset(given.get("dataset")):  # folder:PATH, array:FILE likewise
        kind, _, path = given["dataset"].partition(":")
        given["dataset"] = f"{kind}:{Path(path).expanduser().resolve()}"
    if "model_options" in given:
        given["model_options"] = dict(given["model_options"])
    return given


def _absolute_py_paths(value):
    """``x.py`` -> ``/abs/x.py``, ``x.py:Factory`` -> ``/abs/x.py:Factory``, in a string or
    each string of a list; module names unchanged."""
    if isinstance(value, list):
        return [_absolute_py_paths(v) for v in value]
    path, colon, attribute = value.rpartition(":") if ":" in value else (value, "", "")
    if path.endswith(".py"):
        return str(Path(path).resolve()) + colon + attribute
    return value


def _train(args) -> int:
    from pyrovae.runs.folders import read_epochs
    from pyrovae.runs.train import train_run

    if args.removed_cvae_prior is not None:
        raise ValueError("--cvae-prior is gone: every prior serves the cvae now; use --prior "
                         "standard_normal (was fixed) or --prior conditional_normal (was "
                         "learned)")
    progress = False if args.quiet else None
    if args.resume:
        if args.config is not None or args.force:
            raise ValueError("--resume takes neither --config nor --force (it continues the "
                             "run's saved config)")
        run_dir = train_run(None, args.out, resume=True, progress=progress,
                            changes=_given_fields(args), tensorboard=args.tensorboard)
    else:
        run_dir = train_run(config_from_args(args), args.out, force=args.force,
                            progress=progress, tensorboard=args.tensorboard)
    last = read_epochs(run_dir / "metrics.jsonl")[-1]
    print(f"trained {last['epoch']} epochs: train ELBO {last['train_elbo']:.2f}, test ELBO "
          f"{last['test_elbo']:.2f} nats per datum; run folder {run_dir}")
    return 0


def _sample(args) -> int:
    from pyrovae.runs.jobs import job_for_run

    check_seed(args.seed, "--seed")
    job = job_for_run(args.run_dir)
    print(job.sample(args.run_dir, n=args.n, out=args.out, seed=args.seed, given=args.given,
                     rows=args.rows))
    return 0


def _evaluate(args) -> int:
    from pyrovae.runs.folders import json_safe, write_json
    from pyrovae.runs.jobs import job_for_run
    from pyrovae.training import distributed
    from pyrovae.training.trainer import resolve_device

    check_seed(args.seed, "--seed")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.nll_samples < 0 or args.chunk < 1:
        raise ValueError(f"--nll-samples must be >= 0 and --chunk >= 1, got "
                         f"{args.nll_samples} and {args.chunk}")
    ctx = distributed.from_environment()
    device = distributed.device_for(ctx, resolve_device(args.device))
    job = job_for_run(args.run_dir, device)
    created = distributed.init(ctx, device, timeout_s=args.dist_timeout)
    try:
        result = job.evaluate(args.run_dir, args.batch_size, args.nll_samples, args.chunk,
                              args.limit, args.seed, ctx)
    except RuntimeError as error:
        if not ctx.enabled:
            raise
        logging.getLogger(__name__).error("rank %d: evaluation failed", ctx.rank,
                                          exc_info=True)
        raise RankFailure(ctx, args.dist_timeout, error) from error
    finally:
        distributed.shutdown(created)
    if ctx.is_main:  # printed first: a folder that cannot be written loses nothing
        print(_compact_lists(json.dumps(json_safe(result), indent=2)), flush=True)
        write_json(args.run_dir / "evaluation.json", result)
        job.evaluation_figures(args.run_dir, result)
    return 0


def _compact_lists(text: str) -> str:
    """Indented JSON with each list of numbers on one line (the per-unit activities)."""
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def _check_kl(args) -> int:
    from pyrovae.inference.check_kl import format_report
    from pyrovae.runs.diagnostics import run_check_kl

    check_seed(args.seed, "--seed")
    report = run_check_kl(args.run_dir, args.batch_size, args.draws, args.seed, args.device,
                          args.alpha)
    if args.json is not None and str(args.json) == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.json is not None:
            from pyrovae.runs.folders import write_json

            write_json(args.json, report)
    return 0 if report["agree"] else 1


def _compare(args) -> int:
    from pyrovae.inference.compare import EstimatorSpec, format_table
    from pyrovae.runs.diagnostics import run_compare

    check_seed(args.seed, "--seed")
    specs = [EstimatorSpec.parse(text) for text in args.estimators] if args.estimators \
        else None
    rows = run_compare(args.run_dir, specs, args.repeats, args.batch_size, args.seed,
                       args.device, args.alpha)
    print(format_table(rows))
    print(f"wrote {args.run_dir / 'compare.csv'} and {args.run_dir / 'figures/compare.png'}")
    return 0


def _runs(args) -> int:
    from pyrovae.runs.run_table import format_table, run_table, table_csv, table_json

    table = run_table(args.folders, args.sort, args.reverse)
    if args.csv:
        print(table_csv(table), end="")
    elif args.json:
        print(table_json(table))
    else:
        print(format_table(table))
    return 0


def _plot(args) -> int:
    from pyrovae.runs.plots import figure_path, plot_runs
    from pyrovae.runs.run_table import run_labels, run_table

    out = figure_path(args.out, "runs.png")
    table = run_table(args.folders)
    for folder, reason in table.damaged:
        print(f"pyrovae plot: left out damaged {folder}: {reason}", file=sys.stderr)
    if not table.rows:
        raise ValueError(f"no readable run folders under {', '.join(map(str, args.folders))}")
    labels = run_labels(table)
    plot_runs({labels[run]: table.histories[run] for run in labels}, out)
    print(f"wrote {out}: {len(labels)} runs ({'; '.join(labels.values())})")
    return 0


COMMANDS = {"train": _train, "sample": _sample, "evaluate": _evaluate, "check-kl": _check_kl,
            "compare": _compare, "runs": _runs, "plot": _plot}


def main(argv: list[str] | None = None) -> int:
    from pyrovae.runs.plugins import load_plugins, plugins_in_argv

    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # before the parser is built, so --help lists the plug-ins' names among the choices
        load_plugins(plugins_in_argv(argv))
    except ValueError as error:
        print(f"pyrovae: error: {error}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"pyrovae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path that cannot be read or written: one line
        where = f": {error.filename}" if error.filename else ""
        print(f"pyrovae {args.command}: error: {error.strerror or error}{where}",
              file=sys.stderr)
        return 2
    except (RankFailure, NonFiniteLossError) as error:  # runtime faults
        print(f"pyrovae {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else " (the last checkpoint is intact)"
        print(f"pyrovae {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
