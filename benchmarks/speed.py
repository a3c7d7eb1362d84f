"""How fast is an SVI epoch? Six ways to train the same MNIST VAE, timed side by side.

    python benchmarks/speed.py --data-dir ../shared/data [--device cpu|cuda] [--epochs 1]
                               [--batch-sizes 256 1024] [--arch relu400|iwae] [--json rows.json]
                               [--gemm default|measure|onednn]

Model (all variants): an MLP encoder and decoder of ``--arch``: ``relu400`` (the default:
784-400-50 encoder, 50-400-784 decoder, ReLU) or ``iwae`` (Burda et al.'s, as in
``reproduce_iwae.py``: two hidden layers of 200 tanh units each way); Bernoulli
likelihood, N(0, I) prior, one-sample Trace_ELBO, Adam lr 1e-3; MNIST binarised once with
a fixed seed, the same data for every variant. Variants:

1. ``pyro_example``: ``pyro.infer.SVI`` + ``pyro.optim.Adam`` fed by a ``DataLoader`` from
   host memory, each batch moved to the device, as Pyro's VAE example does;
2. ``pyrovae_eager``: pyrovae's fast stepper, eager (``compile="none"``), data on the device;
3. ``pyrovae_fast``: pyrovae's default (``compile="auto"``): a CUDA graph on CUDA, and on the
   CPU the same thing as (2), so it is not run there;
3b. ``pyrovae_traced`` (CPU only): ``compile="trace"``, the step recorded once and replayed
   (torch's default products, or ``--gemm``'s choice; the status is printed);
   ``pyrovae_inductor`` (CPU only, run when named): that program compiled by inductor (its
   compile time falls in the first epoch, which the median leaves out);
3c. ``numpyro_jit`` (CPU, run when named, needs ``numpyro`` and ``jax``): NumPyro's SVI with
   the whole epoch in one jitted ``lax.fori_loop``, its compile time printed apart;
4. ``torch_eager``: a hand-written PyTorch ELBO step (same maths, same networks);
5. ``torch_graph``: (4) captured in one CUDA graph (CUDA only);
6. ``matmul_floor``: only the matrix products of the forward and backward passes.

Each variant trains a fresh model from the same seed for ``--epochs`` epochs. The variants take
turns, one epoch each, in an order rotated every round (each keeps its own RNG stream, so it
draws what it would alone): a slow spell of a shared machine hits all of them. The table gives
the median seconds per epoch, samples per second, peak device memory (CUDA only: the peak
during the variant's epochs above what all variants hold resident before them), the test
ELBO after those epochs (one-sample estimate, nats per image: no variant wins by doing less),
and the time ratios to (1), to the hand-written step ((5) on CUDA, else (4)), to (6) and to
the GEMM limit: the step's matrix-product FLOPs at the best GEMM rate measured on this machine
by any library here (torch's default, oneDNN, jax when installed; ``benchmarks/gemm_limit.py``),
printed with the rates before each batch size's epochs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import numpyro_vae  # noqa: E402
from benchmarks.gemm_limit import gemm_limit, step_products, torch_products  # noqa: E402
from pyrovae import VAE, Trainer, binarize, evaluate_elbo, load_dataset  # noqa: E402
from pyrovae.components.machine import device_name  # noqa: E402
from pyrovae.training.traced import GEMM_CHOICES  # noqa: E402
from pyrovae.training.trainer import resolve_device  # noqa: E402

Z_DIM, LR, PIXELS = 50, 1e-3, 784


@dataclass(frozen=True)
class Arch:
    """Hidden layer widths and activation of the encoder and of the decoder."""

    hidden: tuple[int, ...]
    activation: str

    def vae(self, device: torch.device) -> VAE:
        return VAE((1, 28, 28), Z_DIM, self.hidden, activation=self.activation,
                   likelihood="bernoulli").to(device)

    def encoder_layers(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer of the encoder (its last gives loc, raw)."""
        widths = [PIXELS, *self.hidden, 2 * Z_DIM]
        return list(zip(widths, widths[1:]))

    def decoder_layers(self) -> list[tuple[int, int]]:
        widths = [Z_DIM, *self.hidden, PIXELS]
        return list(zip(widths, widths[1:]))

    def layers(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of every linear layer, the encoder's first."""
        return self.encoder_layers() + self.decoder_layers()


ARCHS = {"relu400": Arch((400,), "relu"), "iwae": Arch((200, 200), "tanh")}
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mlp(layers: list[tuple[int, int]], activation: str) -> nn.Sequential:
    """Linear layers with the activation between them (none after the last)."""
    modules = []
    for fan_in, fan_out in layers:
        modules += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*modules[:-1])


class TorchVAE(nn.Module):
    """The same VAE by hand: one-sample ELBO with sampled KL, as Trace_ELBO computes it."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.encoder = mlp(arch.encoder_layers(), arch.activation)
        self.decoder = mlp(arch.decoder_layers(), arch.activation)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch; ``x`` of shape (B, 784), binary."""
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw) + 1e-5
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_prior_minus_q = (-0.5 * z.pow(2) + 0.5 * eps.pow(2) + scale.log()).sum(-1)
        return -(log_lik + log_prior_minus_q).sum()


def batches(x: torch.Tensor, batch_size: int):
    order = torch.randperm(len(x), device=x.device)
    for i in range(len(x) // batch_size):
        yield x[order[i * batch_size:(i + 1) * batch_size]]


class Variant:
    """One way to train: ``epoch()`` runs one training epoch, ``test_elbo()`` scores it.

    Each variant owns its torch RNG stream (saved and restored around its epochs), so the
    variants can take turns epoch by epoch and still draw exactly what they would alone.
    """

    def __init__(self, epoch: Callable[[], None], test_elbo: Callable[[], float],
                 device: torch.device):
        self._epoch, self._test_elbo, self.device = epoch, test_elbo, device
        self._rng = _rng_state(device)

    def timed_epoch(self) -> float:
        """Seconds of one epoch, the device synchronised before and after."""
        _set_rng_state(self._rng, self.device)
        # the variants' PyroModules share parameter names: a name another variant left in
        # Pyro's global store would replace this variant's own parameter (untimed)
        pyro.clear_param_store()
        sync(self.device)
        start = time.perf_counter()
        self._epoch()
        sync(self.device)
        seconds = time.perf_counter() - start
        self._rng = _rng_state(self.device)
        return seconds

    def test_elbo(self) -> float:
        _set_rng_state(self._rng, self.device)
        pyro.clear_param_store()
        return self._test_elbo()


def _rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device)
                                   if device.type == "cuda" else None)


def _set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def pyro_example(arch, train, test, batch_size, device) -> Variant:
    from torch.utils.data import DataLoader, TensorDataset

    vae = arch.vae(device)
    pyro.clear_param_store()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}),
                         pyro.infer.Trace_ELBO())
    loader = DataLoader(TensorDataset(train.cpu()), batch_size=batch_size, shuffle=True,
                        drop_last=True)

    def epoch():
        for (x,) in loader:
            svi.step(x.to(device))

    return Variant(epoch, lambda: evaluate_elbo(vae, test), device)


def pyrovae_variant(compile):
    def setup(arch, train, test, batch_size, device, gemm="default") -> Variant:
        vae = arch.vae(device)
        trainer = Trainer(vae, "trace", lr=LR, compile=compile, gemm=gemm)

        def epoch():
            trainer.fit(train, trainer.epoch + 1, batch_size, progress=False)
            traced = getattr(trainer.stepper, "traced", None)
            if traced is not None and trainer.epoch == 1:
                print(f"  {compile}: {traced.status}", flush=True)

        return Variant(epoch, lambda: evaluate_elbo(vae, test), device)

    return setup


def torch_variant(graph: bool):
    def setup(arch, train, test, batch_size, device) -> Variant:
        model = TorchVAE(arch).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, capturable=graph)
        flat = train.reshape(len(train), -1)
        step = _torch_graph_step(model, optimizer, flat[:batch_size]) if graph else None

        def epoch():
            for x in batches(flat, batch_size):
                if graph:
                    step(x)
                else:
                    optimizer.zero_grad(set_to_none=False)
                    model.loss(x).backward()
                    optimizer.step()

        def test_elbo():
            with torch.no_grad():
                test_flat = test.reshape(len(test), -1)
                elbo = -sum(model.loss(test_flat[i:i + 1000])
                            for i in range(0, len(test), 1000))
            return float(elbo) / len(test)

        return Variant(epoch, test_elbo, device)

    return setup


def _torch_graph_step(model, optimizer, example):
    """PyTorch's whole-step CUDA-graph recipe: warm up on a side stream, capture, replay."""
    static_x = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            model.loss(static_x).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        model.loss(static_x).backward()
        optimizer.step()

    def step(x):
        static_x.copy_(x)
        graph.replay()

    return step


def matmul_floor(arch, train, test, batch_size, device) -> Variant:
    """The GEMMs of one step (forward, grad-input except layer 1, grad-weight), per batch."""
    step = torch_products(step_products(arch.layers(), batch_size), device)
    steps = len(train) // batch_size

    def epoch():
        for _ in range(steps):
            step()

    return Variant(epoch, lambda: math.nan, device)


def numpyro_jit(arch, train, test, batch_size, device) -> Variant:
    """NumPyro, the whole epoch in one jitted ``lax.fori_loop`` (``benchmarks/numpyro_vae.py``)."""
    from benchmarks.numpyro_vae import numpyro_variant

    return numpyro_variant(arch, train, test, batch_size, device, LR, Z_DIM, Variant)


VARIANTS = {
    "pyro_example": pyro_example,
    "pyrovae_eager": pyrovae_variant("none"),
    "pyrovae_fast": pyrovae_variant("auto"),
    "pyrovae_traced": pyrovae_variant("trace"),
    "pyrovae_inductor": pyrovae_variant("inductor"),
    "numpyro_jit": numpyro_jit,
    "torch_eager": torch_variant(graph=False),
    "torch_graph": torch_variant(graph=True),
    "matmul_floor": matmul_floor,
}
CUDA_ONLY = {"pyrovae_fast", "torch_graph"}  # on the CPU: same as eager, or impossible
CPU_ONLY = {"pyrovae_traced", "pyrovae_inductor", "numpyro_jit"}  # traced: on CUDA the
# graph captures the step; numpyro_jit: jax's CPU build
OPTIONAL = {"pyrovae_inductor", "numpyro_jit"}  # run when named in --variants


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        default=[v for v in VARIANTS if v not in OPTIONAL])
    parser.add_argument("--arch", default="relu400", choices=ARCHS,
                        help="relu400: 784-400-50 ReLU; iwae: 784-200-200-50 tanh")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N "
                        "training images (smoke tests)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--gemm", default="default", choices=GEMM_CHOICES,
                        help="the traced pyrovae variants' matrix products (Trainer's gemm)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_dir)
    train = binarize(data.train_x[:args.limit], "static", seed=0).to(device)
    test = binarize(data.test_x, "static", seed=1).to(device)
    rows = []
    for batch_size in args.batch_sizes:
        names = [n for n in args.variants if n not in
                 (CPU_ONLY if device.type == "cuda" else CUDA_ONLY)]
        if "numpyro_jit" in names and not numpyro_vae.available():
            print("  numpyro_jit: skipped (pip install numpyro jax to run it)", flush=True)
            names.remove("numpyro_jit")
        variants = {}
        for name in names:
            pyro.set_rng_seed(0)  # every variant starts from the same seed
            options = {"gemm": args.gemm} if name.startswith("pyrovae_") else {}
            variants[name] = VARIANTS[name](ARCHS[args.arch], train, test, batch_size, device,
                                            **options)
        limit = gemm_limit(ARCHS[args.arch].layers(), batch_size, len(train) // batch_size,
                           device)
        print(f"  batch {batch_size}: {limit.describe()}", flush=True)
        times = {name: [] for name in names}
        peaks = dict.fromkeys(names, 0.0)
        for epoch in range(args.epochs):
            # the variants take turns, one epoch each, in an order rotated every round, so a
            # slow spell of a shared machine is spread over all of them
            shift = epoch % len(names)
            for name in names[shift:] + names[:shift]:
                if device.type == "cuda":  # every variant stays resident: count the rise
                    torch.cuda.reset_peak_memory_stats(device)
                    resident = torch.cuda.memory_allocated(device)
                times[name].append(variants[name].timed_epoch())
                if device.type == "cuda":
                    rise = torch.cuda.max_memory_allocated(device) - resident
                    peaks[name] = max(peaks[name], rise / 2**20)
        for name in names:
            seconds = statistics.median(times[name])
            rows.append({
                "variant": name, "arch": args.arch, "device": device_name(device),
                "batch_size": batch_size,
                "epochs": args.epochs, "seconds_per_epoch": seconds,
                "samples_per_second": (len(train) // batch_size) * batch_size / seconds,
                "peak_mib": peaks[name] if device.type == "cuda" else None,
                "test_elbo": variants[name].test_elbo(),
                "gemm_limit_seconds": limit.seconds_per_epoch,
                "gemm_limit_gflops": limit.best.best, "gemm_limit_library": limit.best.library,
            })
            print(f"  {name:14s} batch {batch_size:5d}: {seconds:8.3f} s/epoch "
                  f"(epochs: {', '.join(f'{t:.3f}' for t in times[name])})", flush=True)
    print_table(rows, device)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def print_table(rows: list[dict], device: torch.device) -> None:
    hand = "torch_graph" if device.type == "cuda" else "torch_eager"
    print(f"\ndevice: {rows[0]['device']}; torch {torch.__version__}, pyro {pyro.__version__}; "
          f"arch {rows[0]['arch']}; {rows[0]['epochs']} epoch(s), median seconds per epoch")
    print(f"| variant | batch | s/epoch | samples/s | peak MiB | test ELBO | x faster than "
          f"pyro_example | time / {hand} | time / matmul_floor | time / GEMM limit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        same = {r["variant"]: r["seconds_per_epoch"] for r in rows
                if r["batch_size"] == row["batch_size"]}
        t = row["seconds_per_epoch"]

        def ratio(value):
            return f"{value:.2f}" if value is not None else "-"

        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        print(f"| {row['variant']} | {row['batch_size']} | {t:.3f} | "
              f"{row['samples_per_second']:,.0f} | {peak} | {row['test_elbo']:.2f} | "
              f"{ratio(same['pyro_example'] / t if 'pyro_example' in same else None)} | "
              f"{ratio(t / same[hand] if hand in same else None)} | "
              f"{ratio(t / same['matmul_floor'] if 'matmul_floor' in same else None)} | "
              f"{ratio(t / row['gemm_limit_seconds'])} |")


if __name__ == "__main__":
    main()
