"""Which way a ``fit`` runs the fast step: eager, recorded and replayed on the CPU (trace
mode, :mod:`pyrovae.training.traced`, optionally compiled by inductor), or captured in a
CUDA graph (:mod:`pyrovae.training.steppers`).

``compile="auto"`` decides per ``fit`` from the device and the number of steps ahead, and
logs which mode it took and why; ``"graph"``, ``"trace"`` and ``"inductor"`` insist (a
``ValueError`` says why a mode cannot be had); ``"none"`` stays eager.
"""

from __future__ import annotations

import logging

import torch

from pyrovae.inference.estimators import Estimator
from pyrovae.inference.pair import PyroPair
from pyrovae.training.distributed import Distributed
from pyrovae.training.steppers import FastStepper, SVIStepper, graph_capturable

logger = logging.getLogger(__name__)
# compile="auto" on the CPU records the step (trace mode) for a fit of at least this many
# steps: recording costs about 0.7 s (digits) to 2 s (MNIST MLP), what 100-200 eager steps take
AUTO_TRACE_STEPS = 500


def choose_step_mode(stepper: FastStepper | SVIStepper, compile: str, gemm: str,
                     distributed: Distributed, pair: PyroPair, estimator: Estimator,
                     x: tuple[torch.Tensor, ...], steps: int) -> None:
    """Turn on CUDA-graph mode, or trace mode, on ``stepper`` when ``compile`` asks for it
    and the step allows it. ``x``: a first batch (for the capture check); ``steps``: how
    many steps this ``fit`` will take; ``gemm``: the traced step's matrix-product choice."""
    if compile == "none" or stepper.use_graph or getattr(stepper, "traced", None) is not None:
        return
    if compile == "auto" and isinstance(stepper, FastStepper) and \
            stepper.device.type == "cpu" and not distributed.enabled:
        if steps >= AUTO_TRACE_STEPS or gemm == "onednn":
            stepper.use_trace(gemm)
            logger.info("traced training: %d steps on the CPU, the step is recorded on "
                        "its first two batches, then replayed", steps)
        else:
            logger.info("eager training: device is cpu, %d steps (fewer than %d: "
                        "recording the step would not pay)", steps, AUTO_TRACE_STEPS)
        return
    if compile in ("trace", "inductor"):
        if distributed.enabled or stepper.device.type != "cpu":
            raise ValueError(f"compile={compile!r} runs in one process on the CPU "
                             "(on CUDA, compile='graph' captures the step)")
        stepper.use_trace(gemm, "inductor" if compile == "inductor" else "replay")
        logger.info("traced training: the step is recorded on its first two "
                    "batches, then replayed%s",
                    " (compiled by inductor)" if compile == "inductor" else "")
        return
    if not isinstance(stepper, FastStepper):
        logger.info("eager training: the svi stepper is never captured")
        return
    if distributed.enabled:
        ok, reason = False, ("DDP training: the step is not captured (DDP's gradient "
                             "all-reduce runs outside the graph here)")
    else:
        ok, reason = graph_capturable(pair, estimator, x, stepper.device)
    if not ok and compile == "graph":
        raise ValueError(f"compile='graph' is not possible here: {reason}")
    stepper.use_graph = ok
    logger.info("%s training: %s", "CUDA-graph" if ok else "eager", reason)
