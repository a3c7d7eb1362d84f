"""Matrix products at the machine's speed: oneDNN's fp32 linear where it beats torch's default.

On some CPUs torch's default fp32 GEMM (MKL, or OpenBLAS) runs at half the speed of oneDNN's,
which torch reaches as ``torch.ops.mkldnn._linear_pointwise`` (measured on an AMD EPYC with
AVX-512, 2 threads: about 200-230 GFLOP/s against 470-500). Which one is faster depends on
the CPU and the shapes, so it is measured, never guessed from the vendor's name:
:func:`choose_gemm` times both on the matrix products of a recorded step
(:mod:`pyrovae.training.traced`), in milliseconds, and :func:`use_onednn` rewrites the
step's ``aten.mm`` / ``aten.addmm`` nodes to oneDNN's linear when it won.

``x @ w`` is ``linear(x, w.T)``: oneDNN takes the transposed view as its weight. Results
equal the default path's within float32 rounding (``tests/test_traced.py``), not bit for bit:
the two libraries sum the products in different orders.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import fx

logger = logging.getLogger(__name__)

aten = torch.ops.aten
MARGIN = 0.05  # oneDNN must be this much faster (a fraction of the default's time)


def onednn_available() -> bool:
    """Whether torch was built with oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                             "_linear_pointwise")


# Custom operators, so that inductor calls them as they are (an external kernel) instead of
# lowering oneDNN's linear itself, which it does only for weights that are graph constants.
@torch.library.custom_op("pyrovae::onednn_mm", mutates_args=())
def _onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


@torch.library.custom_op("pyrovae::onednn_addmm", mutates_args=())
def _onednn_addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


@_onednn_mm.register_fake
def _(a, b):
    return a.new_empty(a.shape[0], b.shape[1])


@_onednn_addmm.register_fake
def _(bias, a, b):
    return a.new_empty(a.shape[0], b.shape[1])


onednn_mm = torch.ops.pyrovae.onednn_mm.default
"""``onednn_mm(a, b)``: ``a @ b`` for 2-D float32 CPU tensors, by oneDNN."""
onednn_addmm = torch.ops.pyrovae.onednn_addmm.default
"""``onednn_addmm(bias, a, b)``: ``bias + a @ b`` (``bias`` of shape ``(b.shape[1],)``), by
oneDNN."""


@dataclass(frozen=True)
class GemmChoice:
    """What :func:`choose_gemm` measured: milliseconds for all the step's products once."""

    default_ms: float
    onednn_ms: float | None  # None: oneDNN not available (or not for these tensors)

    @property
    def onednn(self) -> bool:
        """oneDNN wins by more than :data:`MARGIN` (a close call stays on the default: the
        timings of a busy machine vary by as much)."""
        return self.onednn_ms is not None and self.onednn_ms < (1 - MARGIN) * self.default_ms

    def describe(self) -> str:
        if self.onednn_ms is None:
            return f"matrix products: torch's default ({self.default_ms:.2f} ms; no oneDNN)"
        path = "oneDNN" if self.onednn else "torch's default"
        return (f"matrix products: {path} (measured per step: default "
                f"{self.default_ms:.2f} ms, oneDNN {self.onednn_ms:.2f} ms)")


def _products(graph: fx.Graph) -> list[fx.Node]:
    """The step's ``mm`` and plain ``addmm`` nodes on 2-D float32 CPU tensors."""
    nodes = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (aten.mm.default,
                                                              aten.addmm.default):
            continue
        if node.kwargs:  # addmm with beta/alpha: not a plain linear
            continue
        values = [a.meta.get("val") for a in node.args]
        if not all(isinstance(v, torch.Tensor) and v.dtype == torch.float32
                   and v.device.type == "cpu" for v in values):
            continue
        if node.target is aten.addmm.default and values[0].dim() != 1:
            continue
        nodes.append(node)
    return nodes


def _time(run, repeats: int) -> float:
    """Milliseconds per call of ``run()`` (the median of ``repeats`` after a warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def choose_gemm(graph: fx.Graph, repeats: int = 11) -> GemmChoice:
    """Time every matrix product of ``graph`` (shapes from its nodes' ``meta['val']``) with
    torch's default and with oneDNN, on random operands of those shapes."""
    shapes = [[tuple(a.meta["val"].shape) for a in node.args] for node in _products(graph)]
    generator = torch.Generator().manual_seed(0)  # its own: training's stream stays put
    operands = [[torch.randn(s, generator=generator) for s in node] for node in shapes]

    def default():
        for ops in operands:
            (torch.addmm if len(ops) == 3 else torch.mm)(*ops)

    default_ms = _time(default, repeats)
    if not onednn_available() or not operands:
        return GemmChoice(default_ms, None)

    def onednn():
        for ops in operands:
            (onednn_addmm if len(ops) == 3 else onednn_mm)(*ops)

    try:
        onednn_ms = _time(onednn, repeats)
    except RuntimeError as error:  # a torch build whose oneDNN refuses these tensors
        logger.info("oneDNN linear unavailable here: %s", error)
        return GemmChoice(default_ms, None)
    return GemmChoice(default_ms, onednn_ms)


def use_onednn(module: fx.GraphModule) -> int:
    """Rewrite ``module``'s matrix products to oneDNN's linear, in place; returns how many."""
    nodes = _products(module.graph)
    for node in nodes:
        node.target = onednn_addmm if node.target is aten.addmm.default else onednn_mm
    module.recompile()
    return len(nodes)
