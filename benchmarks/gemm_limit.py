"""The GEMM limit of a training step: its matrix products' FLOPs over the best GEMM rate
measured on this machine.

``benchmarks/speed.py`` divides each variant's epoch by this limit. An epoch cannot take less
time than its products at the fastest rate any library here reached, so the ratio says how
far a variant is from the machine's arithmetic, whatever the library.

Rates are measured, never assumed: each available library (torch's default products; on the
CPU oneDNN's fp32 linear, ``torch.ops.mkldnn._linear_pointwise``; ``jax.numpy.dot`` when jax
is installed, on the CPU) is timed on the step's own products and on one large square
product. The best of those rates sets the limit. The rates are printed beside it, in GFLOP/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

SQUARE = 1024  # the large square product: the library's rate on a shape it is built for


def step_products(layers: list[tuple[int, int]], batch_size: int) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of every matrix product of one training step (an ``(m, k) @ (k, n)``
    product each): for each linear layer ``(fan_in, fan_out)`` of ``layers`` (the encoder's,
    then the decoder's), the forward product, the gradient of its input (not for the first
    layer: the data needs none) and the gradient of its weight."""
    shapes = []
    for i, (fan_in, fan_out) in enumerate(layers):
        shapes.append((batch_size, fan_in, fan_out))      # forward: x @ W
        if i > 0:
            shapes.append((batch_size, fan_out, fan_in))  # grad of the input: g @ W.T
        shapes.append((fan_in, batch_size, fan_out))      # grad of the weight: x.T @ g
    return shapes


def flops(shapes: list[tuple[int, int, int]]) -> int:
    """Floating-point operations of the products: ``2 m k n`` each."""
    return sum(2 * m * k * n for m, k, n in shapes)


@dataclass(frozen=True)
class Rate:
    """One library's measured rate, GFLOP/s, on the step's products and on a square one."""

    library: str
    step_gflops: float
    square_gflops: float

    @property
    def best(self) -> float:
        return max(self.step_gflops, self.square_gflops)


def _seconds(run: Callable[[], None], sync: Callable[[], None], repeats: int) -> float:
    """Median seconds of ``run()`` over ``repeats`` timed calls, after two warm-up calls."""
    for _ in range(2):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_products(shapes: list[tuple[int, int, int]], device: torch.device,
                   product: Callable = torch.mm) -> Callable[[], None]:
    """A callable that runs ``product(a, b)`` once for each ``(m, k, n)`` of ``shapes``, on
    random ``(m, k)`` and ``(k, n)`` operands made once on ``device``."""
    pairs = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device))
             for m, k, n in shapes]

    def run():
        for a, b in pairs:
            product(a, b)

    return run


def _jax_products(shapes):
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
    pairs = [(jax.random.normal(keys[2 * i], (m, k)), jax.random.normal(keys[2 * i + 1], (k, n)))
             for i, (m, k, n) in enumerate(shapes)]

    def run():
        for a, b in pairs:
            out = dot(a, b)
        out.block_until_ready()

    return run


def _libraries(device: torch.device) -> dict[str, Callable]:
    """Library name -> ``make(shapes)`` giving a callable that runs those products once."""
    libraries = {"torch": lambda shapes: torch_products(shapes, device)}
    if device.type == "cpu":
        from pyrovae.training import gemm

        if gemm.onednn_available():
            libraries["oneDNN"] = lambda shapes: torch_products(shapes, device, gemm.onednn_mm)
        try:
            import jax  # noqa: F401
        except ImportError:
            pass
        else:
            libraries["jax"] = _jax_products
    return libraries


def measure_rates(shapes: list[tuple[int, int, int]], device: torch.device,
                  repeats: int = 20) -> list[Rate]:
    """Each available library's GFLOP/s on ``shapes`` (all of them, once per call) and on a
    ``SQUARE``-sized square product."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    square = [(SQUARE, SQUARE, SQUARE)]
    rates = []
    for name, make in _libraries(device).items():
        step = flops(shapes) / _seconds(make(shapes), sync, repeats) / 1e9
        big = flops(square) / _seconds(make(square), sync, max(3, repeats // 4)) / 1e9
        rates.append(Rate(name, step, big))
    return rates


@dataclass(frozen=True)
class GemmLimit:
    """Seconds per epoch of the step's products at the best rate measured."""

    gflop_per_epoch: float
    rates: list[Rate]

    @property
    def best(self) -> Rate:
        return max(self.rates, key=lambda r: r.best)

    @property
    def seconds_per_epoch(self) -> float:
        return self.gflop_per_epoch / self.best.best

    def describe(self) -> str:
        measured = "; ".join(f"{r.library} {r.step_gflops:.0f} on the step's products, "
                             f"{r.square_gflops:.0f} on {SQUARE}^3" for r in self.rates)
        return (f"GEMM limit: {self.gflop_per_epoch:.1f} GFLOP per epoch at "
                f"{self.best.best:.0f} GFLOP/s ({self.best.library}, the best rate measured) "
                f"= {self.seconds_per_epoch:.3f} s/epoch; GFLOP/s measured: {measured}")


def gemm_limit(layers: list[tuple[int, int]], batch_size: int, steps: int,
               device: torch.device, repeats: int = 20) -> GemmLimit:
    """The GEMM limit of ``steps`` training steps of an MLP with linear ``layers`` at
    ``batch_size``."""
    shapes = step_products(layers, batch_size)
    return GemmLimit(steps * flops(shapes) / 1e9, measure_rates(shapes, device, repeats))
