"""The speed a Pyro user gets by changing two lines: Pyro's VAE example model, trained by
``pyro.infer.SVI`` as the example does and by pyrovae's ``Trainer``, on the same batches.

    python benchmarks/own_model.py --data-dir ../shared/data [--device cpu|cuda]
        [--rounds 3] [--batch-size 256] [--limit N] [--json rows.json]

The model is ``TutorialVAE`` of ``examples/bring_your_own_model.py``, Pyro's
``examples/vae/vae.py`` model as written there (784-400-50 softplus encoder and decoder,
``pyro.module``, Bernoulli on grey MNIST, z_dim 50), unchanged. Variants:

1. ``pyro_svi``: ``SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())``
   and ``svi.step(x)`` per batch, as the example's ``train`` does;
2. ``pyrovae``: ``Trainer(vae, "trace", lr=1e-3).fit(...)``, eager (the CPU's only mode);
3. ``pyrovae_graph`` (CUDA only): the same with ``compile="auto"`` (a CUDA graph of the step).

Every variant gets the same batches: the training images on the device, cut in a fresh
random order each epoch from the same seed (the example's ``DataLoader`` host-to-device
copies are left out of every variant). Each keeps its own model, optimiser and Pyro
parameter store (swapped in for its epochs: the store is global) and its own RNG stream.
The variants take turns, one epoch each, in an order rotated every round. The table gives
the median seconds per epoch, its ratio to ``pyro_svi``, and the test ELBO after the rounds
(one-sample estimate, nats per image, the same seed for all).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyrovae import DeviceBatches, Trainer, evaluate_elbo, load_dataset  # noqa: E402
from pyrovae.components.machine import device_name  # noqa: E402
from pyrovae.training.trainer import resolve_device  # noqa: E402


def tutorial_vae_class():
    """``TutorialVAE`` from examples/bring_your_own_model.py (Pyro's example model)."""
    path = REPO / "examples" / "bring_your_own_model.py"
    spec = importlib.util.spec_from_file_location("bring_your_own_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bring_your_own_model"] = module
    spec.loader.exec_module(module)
    return module.TutorialVAE


class Variant:
    """A model with its own optimiser, Pyro parameter store and RNG stream."""

    def __init__(self, name, vae, device):
        self.name, self.vae, self.device = name, vae, device
        self.store_state = {"params": {}, "constraints": {}}
        self.rng = None
        self.epochs = 0

    @contextlib.contextmanager
    def own_state(self):
        """This variant's parameter store and RNG stream, swapped in for the block."""
        store = pyro.get_param_store()
        store.clear()
        store.set_state(self.store_state)
        if self.rng is not None:
            torch.set_rng_state(self.rng["cpu"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self.rng["cuda"], self.device)
        try:
            yield
        finally:
            self.store_state = store.get_state()
            self.rng = {"cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                self.rng["cuda"] = torch.cuda.get_rng_state(self.device)

    def epoch(self, train, batch_size) -> float:  # pragma: no cover - per variant
        raise NotImplementedError


class PyroSVI(Variant):
    def __init__(self, name, vae, device, lr):
        super().__init__(name, vae, device)
        self.svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}),
                                  pyro.infer.Trace_ELBO())

    def epoch(self, train, batch_size) -> float:
        start = time.perf_counter()
        for x in DeviceBatches(train, batch_size):
            self.svi.step(x)  # returns a float: the example adds it up
        return time.perf_counter() - start


class PyrovaeTrainer(Variant):
    def __init__(self, name, vae, device, lr, compile):
        super().__init__(name, vae, device)
        with self.own_state():
            self.trainer = Trainer(vae, "trace", lr=lr, compile=compile)

    def epoch(self, train, batch_size) -> float:
        self.epochs += 1
        start = time.perf_counter()
        self.trainer.fit(train, self.epochs, batch_size, progress=False)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per variant")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, help="first N training images (smoke tests)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_dir)
    train = data.train_x[:args.limit].to(device)
    test = data.test_x.to(device)
    TutorialVAE = tutorial_vae_class()

    variants = []
    makers = [("pyro_svi", lambda vae: PyroSVI("pyro_svi", vae, device, args.lr)),
              ("pyrovae", lambda vae: PyrovaeTrainer("pyrovae", vae, device, args.lr, "none"))]
    if device.type == "cuda":
        makers.append(("pyrovae_graph", lambda vae: PyrovaeTrainer(
            "pyrovae_graph", vae, device, args.lr, "auto")))
    for _, make in makers:
        pyro.set_rng_seed(0)  # the same initial weights and the same batches for each
        variant = make(TutorialVAE().to(device))
        variant.rng = None
        variants.append(variant)
    times = {v.name: [] for v in variants}
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            if variant.rng is None:
                pyro.set_rng_seed(1)
            with variant.own_state():
                times[variant.name].append(variant.epoch(train, args.batch_size))
    rows = []
    base = statistics.median(times["pyro_svi"])
    for variant in variants:
        with variant.own_state(), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else []):
            pyro.set_rng_seed(2)
            elbo = evaluate_elbo(variant.vae, test)
        seconds = statistics.median(times[variant.name])
        rows.append({"variant": variant.name, "device": device_name(device),
                     "batch_size": args.batch_size, "rounds": args.rounds,
                     "train_images": len(train), "seconds_per_epoch": seconds,
                     "all_seconds": times[variant.name], "ratio_to_pyro_svi": seconds / base,
                     "test_elbo": elbo, "torch": torch.__version__,
                     "pyro": pyro.__version__})
    print(f"Pyro's VAE example model, MNIST ({len(train)} training images), batch "
          f"{args.batch_size}, {args.rounds} interleaved rounds; {device_name(device)}\n")
    print("| variant | s/epoch (median) | time / pyro_svi | test ELBO |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['seconds_per_epoch']:.3f} | "
              f"{row['ratio_to_pyro_svi']:.2f} | {row['test_elbo']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
