"""Time one training step of Burda et al.'s MLP: pyrovae's fast stepper against a hand-written
PyTorch step, side by side.

    python benchmarks/iwae_step.py [--batch-sizes 20 128 256] [--steps 60] [--rounds 5]

The model is the one of ``reproduce_iwae.py`` (784-200-200-50 tanh MLPs, Bernoulli decoder,
N(0, I) prior, one particle, Adam with eps 1e-4). pyrovae trains it with
``Trainer(..., "trace", on_nan="skip")`` as the reproduction does; the hand-written step is
the same ELBO written directly in torch (reparameterised draw, closed-form KL, fused Adam).
The data are random binary images: step time does not depend on their values. The two take
turns, ``--steps`` steps at a time, for ``--rounds`` rounds (the order alternating), and the
table gives each one's median milliseconds per step and their ratio. CPU only by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyrovae import VAE, Trainer  # noqa: E402
from pyrovae.runs import environment  # noqa: E402

PIXELS, HIDDEN, Z_DIM, LR, ADAM_EPS = 784, 200, 50, 1e-3, 1e-4


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN),
                         nn.Tanh(), nn.Linear(HIDDEN, outputs))


def hand_written(x: torch.Tensor, batch_size: int):
    """An epoch function over ``x`` (N, 784) for the plain-torch step."""
    encoder, decoder = mlp(PIXELS, 2 * Z_DIM), mlp(Z_DIM, PIXELS)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=LR, eps=ADAM_EPS, fused=True)

    def epoch():
        for start in range(0, len(x) - batch_size + 1, batch_size):
            batch = x[start:start + batch_size]
            loc, log_scale = encoder(batch).chunk(2, dim=-1)
            z = loc + log_scale.exp() * torch.randn_like(loc)
            log_lik = -F.binary_cross_entropy_with_logits(decoder(z), batch, reduction="sum")
            kl = 0.5 * (loc ** 2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum()
            optimizer.zero_grad(set_to_none=True)
            (kl - log_lik).backward()
            optimizer.step()
    return epoch


def pyrovae_epoch(x: torch.Tensor, batch_size: int):
    """An epoch function over ``x`` (N, 1, 28, 28) for pyrovae's trainer."""
    vae = VAE((1, 28, 28), Z_DIM, (HIDDEN, HIDDEN), activation="tanh", likelihood="bernoulli")
    trainer = Trainer(vae, "trace", particles=1, adam_eps=ADAM_EPS, lr=LR, on_nan="skip")
    return lambda: trainer.fit(x, trainer.epoch + 1, batch_size, progress=False)


def time_batch_size(batch_size: int, steps: int, rounds: int) -> dict:
    """Median ms per step of each, measured in alternating turns."""
    torch.manual_seed(0)
    images = (torch.rand(batch_size * steps, 1, 28, 28) < 0.3).float()
    epochs = {"pyrovae": pyrovae_epoch(images, batch_size),
              "hand-written": hand_written(images.reshape(-1, PIXELS), batch_size)}
    for epoch in epochs.values():  # warm-up: first-call costs out of the timing
        epoch()
    times = {name: [] for name in epochs}
    for turn in range(rounds):
        for name in (list(epochs) if turn % 2 == 0 else list(epochs)[::-1]):
            start = time.perf_counter()
            epochs[name]()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"batch_size": batch_size, **{f"{k}_ms": v for k, v in medians.items()},
            "ratio": medians["pyrovae"] / medians["hand-written"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 128, 256])
    parser.add_argument("--steps", type=int, default=60, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=5, help="turns of each")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    env = environment(torch.device("cpu"))
    rows = [time_batch_size(b, args.steps, args.rounds) for b in args.batch_sizes]
    print(f"device: CPU {env['device_name']}, {env['torch_threads']} threads; torch "
          f"{torch.__version__}; median of {args.rounds} turns of {args.steps} steps")
    print("| batch | pyrovae ms/step | hand-written ms/step | pyrovae / hand-written |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch_size']} | {row['pyrovae_ms']:.2f} | {row['hand-written_ms']:.2f} "
              f"| {row['ratio']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
