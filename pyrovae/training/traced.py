"""The step recorded once as a tensor program and replayed: Pyro's Python runs twice, not
on every batch.

Every SVI step on batches of one shape runs the same tensor program: the same model, guide,
sites and shapes. :class:`TracedStep` records the loss and the gradients of the estimator's
loss on the model/guide pair with ``torch.fx``'s ``make_fx`` (real tensors, so a recording
step is a real step), as a graph of ATen operations in which the random draws are operations
too (``aten.normal_`` ...), so every replay draws fresh noise from torch's generator, in the
order the eager step would: on the same generator state the replayed step gives the eager
step's loss and gradients bit for bit (``tests/test_traced.py``), and a resumed run
continues the same stream of numbers. The replay calls the ATen operations directly, under
``no_grad`` (the backward pass is in the program), so neither Pyro's poutine stack, nor
distribution objects, nor autograd's graph building run per step. Its matrix products may
then go through oneDNN (:mod:`pyrovae.training.gemm`), where that is measured to be faster.

Safety: the step is recorded on two batches (the second and third steps; the first runs
eagerly, so lazily made parameters and Pyro's one-off work such as a plate-nesting guess are
done), and replayed only if both recordings are the same program with the same constants.
A program that reads values on the host (``.item()``, a data-dependent branch), or whose
recordings differ (varying shapes, sites that appear only sometimes, Python-side state),
falls back to the eager step, with the reason logged. A batch whose shapes differ from the
recorded ones runs eagerly. Tensors the step reads from outside (such as the estimator's KL
weight, changed in place by the warm-up) are read by reference on every replay.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovae.training import gemm

logger = logging.getLogger(__name__)

GEMM_CHOICES = ("measure", "default", "onednn")
BACKENDS = ("replay", "inductor")  # the recorded program run as it is, or compiled
HOST_READ = ("the step reads tensor values on the host (.item(), or a branch on the data), "
             "so its program may change from batch to batch")
HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def _inductor_patch():
    """Inductor's random operations as ATen's: the compiled step draws as the eager one."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(fallback_random=True)


def _signature(args: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) for a in args)


def _constants(module: fx.GraphModule) -> list[torch.Tensor]:
    return [getattr(module, n.target) for n in module.graph.nodes if n.op == "get_attr"]


def _same_program(a: fx.GraphModule, b: fx.GraphModule) -> str | None:
    """``None`` if ``a`` and ``b`` are the same program with the same constants, else why
    not."""
    if a.code != b.code:
        return "the two recordings are different programs (the model's Python depends on " \
            "the data or on state that changes between steps)"
    for x, y in zip(_constants(a), _constants(b)):
        same = x is y or (x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y))
        if not same:
            return "a constant of the program changed between the two recordings"
    return None


class TracedStep:
    """Loss and gradients of ``loss_fn(*args)`` with respect to ``params``, eagerly at
    first, then replayed from a recording (see the module docstring).

    ``loss_fn(*args)`` returns the scalar loss to minimise; ``__call__`` returns it (detached)
    and gives every parameter its ``.grad`` (call it with the gradients cleared, as the
    stepper's ``zero_grad(set_to_none=True)`` does: an eager step adds to them).
    ``gemm_choice`` chooses the matrix products' library: ``"measure"`` (time torch's
    default and oneDNN on the step's own products, once, and take the faster),
    ``"default"`` or ``"onednn"``; ``gemm_used`` is what was taken (a
    resumed run passes it back, so it takes the same path: a close measurement could
    otherwise flip and change the numbers by rounding). ``status`` says what it does and
    why.
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params: list[torch.Tensor],
                 gemm_choice: str = "measure", backend: str = "replay"):
        if gemm_choice not in GEMM_CHOICES:
            raise ValueError(f"gemm must be one of {', '.join(GEMM_CHOICES)}; got "
                             f"{gemm_choice!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.loss_fn, self.params, self.gemm_choice = loss_fn, list(params), gemm_choice
        self.backend = backend
        self._compiled = None  # inductor: the compiled program, until its first call works
        self.compiled = False  # whether self.program is inductor's
        self.program: fx.GraphModule | None = None
        self.first: fx.GraphModule | None = None
        self.signature: tuple | None = None
        self.calls = 0
        self.failed: str | None = None  # why the step stays eager
        self.status = "eager until recorded"
        self.gemm_used: str | None = None  # "default" or "onednn", once recorded

    def _loss_and_grads(self, *inputs):
        args = inputs[len(self.params):]
        loss = self.loss_fn(*args)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return (loss.detach(), *grads)

    def _eager(self, args) -> torch.Tensor:
        loss = self.loss_fn(*args)
        loss.backward()
        return loss

    def _give(self, outputs) -> torch.Tensor:
        for p, g in zip(self.params, outputs[1:]):
            p.grad = g
        return outputs[0]

    def _fail(self, reason: str) -> None:
        self.failed, self.program, self.first = reason, None, None
        self.status = f"eager: {reason}"
        logger.warning("traced step: falling back to the eager step: %s", reason)

    def _record(self, args) -> fx.GraphModule | None:
        """One real step, recorded; ``None`` (and eager from now on) if it cannot be."""
        try:
            module = make_fx(self._loss_and_grads)(*self.params, *args)
        except Exception as error:  # noqa: BLE001 - any failure to record means eager
            if "_local_scalar_dense" in str(error):
                self._fail(HOST_READ)
            else:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self._fail(f"recording failed ({type(error).__name__}: {first_line})")
            return None
        if any(n.target in HOST_READS for n in module.graph.nodes):
            self._fail(HOST_READ)
            return None
        return module

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """The loss of batch ``args`` (detached); every parameter's ``.grad`` set."""
        self.calls += 1
        if self.failed is not None or self.calls == 1:
            return self._eager(args)
        if self.program is not None:
            if _signature(args) != self.signature:
                return self._eager(args)  # e.g. a last, shorter batch
            if self._compiled is not None:
                return self._give(self._first_compiled_call(args))
            with torch.no_grad(), self._inductor_options():
                return self._give(self.program(*self.params, *args))
        state = torch.get_rng_state()
        module = self._record(args)
        if module is None:
            torch.set_rng_state(state)  # the failed recording drew: draw again, eagerly
            return self._eager(args)
        # the recording ran the step for real; run it again from the same state for the
        # outputs (make_fx returns only the program)
        torch.set_rng_state(state)
        with torch.no_grad():
            outputs = module(*self.params, *args)
        if self.first is None:
            self.first, self.signature = module, _signature(args)
            return self._give(outputs)
        reason = _same_program(self.first, module) if _signature(args) == self.signature \
            else "the first two batches have different shapes"
        if reason is not None:
            self._fail(reason)
        else:
            self._finish(module)
        return self._give(outputs)

    def _finish(self, module: fx.GraphModule) -> None:
        """Keep ``module`` as the program; choose its matrix products' library."""
        self.first = None
        note = "matrix products: torch's default"
        if self.gemm_choice == "onednn":
            gemm.use_onednn(module)
            note = "matrix products: oneDNN (as asked)"
        elif self.gemm_choice == "measure" and self.signature[0][2].type == "cpu":
            choice = gemm.choose_gemm(module.graph)
            if choice.onednn:
                gemm.use_onednn(module)
            note = choice.describe()
        self.gemm_used = "onednn" if note.startswith("matrix products: oneDNN") \
            else "default"
        for node in module.graph.nodes:  # recorded values: drop them, keep the program
            node.meta.pop("val", None)
            node.meta.pop("tensor_meta", None)
        self.program = module
        self.status = f"replaying the recorded step; {note}"
        if self.backend == "inductor":
            self._compiled = torch.compile(module, backend="inductor", dynamic=False)

    def _inductor_options(self):
        """Inductor's options around every call of a compiled program (a recompilation,
        should one happen, must draw as eagerly too); nothing for a plain replay."""
        return _inductor_patch() if self.compiled else contextlib.nullcontext()

    def _first_compiled_call(self, args):
        """Compile (on this call) and run the inductor program; on any failure (no C++
        compiler, an unsupported operation) keep replaying the recorded one, with the reason
        logged. Random operations fall back to ATen's (``fallback_random``), so the draws are
        the eager step's; the fused arithmetic agrees with it within float32 rounding."""
        state = torch.get_rng_state()
        start = time.perf_counter()
        try:
            with torch.no_grad(), _inductor_patch():
                outputs = self._compiled(*self.params, *args)
        except Exception as error:  # noqa: BLE001 - any failure: the plain replay
            first_line = (str(error).strip().splitlines() or [""])[0]
            self._compiled = None
            self.status += f"; inductor failed ({type(error).__name__}: {first_line})"
            logger.warning("traced step: inductor failed, replaying the recorded step "
                           "instead: %s: %s", type(error).__name__, first_line)
            torch.set_rng_state(state)
            with torch.no_grad():
                return self.program(*self.params, *args)
        self.program, self._compiled, self.compiled = self._compiled, None, True
        self.status += f"; compiled by inductor in {time.perf_counter() - start:.1f} s"
        logger.info("traced step: %s", self.status)
        return outputs
        logger.info("traced step: %s", self.status)
