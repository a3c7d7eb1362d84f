"""Data-parallel scaling: samples per second with 1, 2, 4, ... processes under torchrun.

    python benchmarks/scaling.py [--procs 1 2] [--device cpu|cuda] [--batch-per-rank 128]
                                 [--steps 100] [--json rows.json]

Each process count is launched as ``python -m torch.distributed.run --standalone
--nproc-per-node N`` running this file with ``--worker``: every rank trains the MNIST VAE
of ``benchmarks/speed.py`` (784-400-50, ReLU, Bernoulli, ``trace``) on random binary images
through pyrovae's fast stepper and DDP (Gloo on the CPU, NCCL on GPUs), ``--batch-per-rank``
images per rank per step (weak scaling: the global batch grows with N). After ``--warmup``
steps, ``--steps`` steps are timed on every rank between two barriers; rank 0 reports.

On the CPU each rank gets ``--threads`` torch threads (default 1), so N processes use N
cores: the efficiency N-process samples/s / (N x 1-process samples/s) then measures what
data parallelism costs (all-reduce, memory bandwidth), not how torch shares threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyrovae import VAE, Trainer  # noqa: E402
from pyrovae.training import distributed  # noqa: E402
from pyrovae.training.trainer import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: train, time, and (rank 0) write the row."""
    torch.set_num_threads(args.threads)
    ctx = replace(distributed.from_environment(), seed=0)
    device = distributed.device_for(ctx, resolve_device(args.device))
    created = distributed.init(ctx, device, timeout_s=300)
    torch.manual_seed(0)  # the same initial model everywhere (DDP broadcasts rank 0's anyway)
    vae = VAE((1, 28, 28), 50, (400,), likelihood="bernoulli").to(device)
    torch.manual_seed(1 + ctx.rank)  # each rank its own data and noise
    x = torch.rand(args.batch_per_rank, 1, 28, 28, device=device).round()
    trainer = Trainer(vae, "trace", lr=1e-3, compile="none", distributed=ctx)
    for _ in range(args.warmup):
        trainer.stepper.step(x)
    trainer.stepper.take_epoch()  # all-reduce: every rank is here
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.stepper.step(x)
    stats = trainer.stepper.take_epoch()  # all-reduce again: waits for the slowest rank
    seconds = time.perf_counter() - start
    if ctx.is_main:
        samples = args.steps * args.batch_per_rank * ctx.world_size
        Path(args.out).write_text(json.dumps({
            "procs": ctx.world_size, "threads_per_rank": args.threads,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.machine()}", "batch_per_rank": args.batch_per_rank,
            "steps": args.steps, "seconds": seconds, "samples_per_second": samples / seconds,
            "train_elbo": -stats.loss_sum / samples}))
    distributed.shutdown(created)


def launch(procs: int, args) -> dict:
    """Run the worker under torchrun with ``procs`` processes; its row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(procs), str(Path(__file__).resolve()), "--worker",
                   "--out", str(out), "--device", args.device, "--threads", str(args.threads),
                   "--batch-per-rank", str(args.batch_per_rank), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
        paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                               if p]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   PYTHONPATH=os.pathsep.join(paths))
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"torchrun with {procs} processes failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--batch-per-rank", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return []
    if min(args.procs) < 1:
        parser.error("--procs must be >= 1")
    rows = [launch(n, args) for n in args.procs]
    base = next((r for r in rows if r["procs"] == 1), None)
    print(f"\ndevice: {rows[0]['device']}; {args.threads} thread(s) per rank, "
          f"{args.batch_per_rank} images per rank per step, {args.steps} timed steps")
    print("| processes | global batch | samples/s | speed-up | efficiency vs linear |")
    print("|---|---|---|---|---|")
    for row in rows:
        speedup = row["samples_per_second"] / base["samples_per_second"] if base else None
        row["speedup"] = speedup
        row["efficiency"] = speedup / row["procs"] if base else None
        cells = (f"{speedup:.2f}", f"{row['efficiency']:.0%}") if base else ("-", "-")
        print(f"| {row['procs']} | {row['procs'] * row['batch_per_rank']} | "
              f"{row['samples_per_second']:,.0f} | {cells[0]} | {cells[1]} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
