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

Safety: the first call runs the step once on a forked RNG, without gradients (Pyro's one-off
work, such as a plate-nesting guess, happens there, off the training stream); the first two
calls are recorded, and the program is replayed only if both recordings are the same program
with the same constants. A program that reads values on the host (``.item()``, a
data-dependent branch), or whose recordings differ (sites that appear only sometimes,
Python-side state that changes from step to step), falls back to the eager step, with the
reason logged. The recording is keyed on the batch's shapes, the parameters'
``requires_grad`` and the modules' train/eval mode: a change records the step again. At the
start of every ``Trainer.fit`` the next replay is checked against an eager step on the same
generator state, so Python-side state changed between two fits (a temperature attribute,
say) is caught and the step recorded again. What none of this can see: Python-side state
changed in the middle of a ``fit`` (a callback setting a model attribute, say) that changes
the program's constants; such a model should train with ``compile="none"``. Tensors the step
reads from outside (such as the estimator's KL weight, changed in place by the warm-up) are
read by reference on every replay, so changing them in place is fine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovae.components.rng import forked_rng
from pyrovae.training import gemm

logger = logging.getLogger(__name__)

GEMM_CHOICES = ("measure", "default", "onednn")
BACKENDS = ("replay", "inductor")  # the recorded program run as it is, or compiled
HOST_READ = ("the step reads tensor values on the host (.item(), or a branch on the data), "
             "so its program may change from batch to batch")
MAX_CHANGES = 8  # recordings thrown away before the step stays eager
HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def _inductor_patch():
    """Inductor's random operations as ATen's: the compiled step draws as the eager one."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(fallback_random=True)


def _signature(args: tuple[torch.Tensor, ...]) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device) for a in args)


def _constants(module: fx.GraphModule) -> list[torch.Tensor]:
    return [getattr(module, n.target) for n in module.graph.nodes if n.op == "get_attr"]


def _agree(a: torch.Tensor | None, b: torch.Tensor | None, exact: bool) -> bool:
    """Equal bit for bit (``exact``), or within float32 rounding of the larger values."""
    if a is None or b is None:
        return a is None and b is None
    if exact:
        return torch.equal(a, b)
    scale = float(a.detach().abs().max()) if a.numel() else 0.0
    return torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1.0))


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
    """Loss and gradients of ``loss_fn(*args)`` with respect to ``params``, replayed from a
    recording (see the module docstring).

    ``loss_fn(*args)`` returns the scalar loss to minimise; ``__call__`` returns it (detached)
    and gives every parameter its ``.grad`` (call it with the gradients cleared, as the
    stepper's ``zero_grad(set_to_none=True)`` does: an eager step adds to them).
    ``gemm_choice`` chooses the matrix products' library: ``"default"``, ``"onednn"`` or
    ``"measure"`` (time both on the step's own products, once, and take oneDNN if it is
    faster by more than :data:`~pyrovae.training.gemm.MARGIN`); ``gemm_used`` is what was
    taken (a resumed run passes it back, so it takes the same path). ``state()``, if given,
    returns what else the program depends on that the step can see (e.g. the modules'
    ``training`` flags): a change records the step again. ``status`` says what it does and
    why.
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params: list[torch.Tensor],
                 gemm_choice: str = "default", backend: str = "replay",
                 state: Callable[[], tuple] | None = None):
        if gemm_choice not in GEMM_CHOICES:
            raise ValueError(f"gemm must be one of {', '.join(GEMM_CHOICES)}; got "
                             f"{gemm_choice!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.loss_fn, self.params, self.gemm_choice = loss_fn, list(params), gemm_choice
        self.backend, self.state = backend, state
        self._compiled = None  # inductor: the compiled program, until its first call works
        self.compiled = False  # whether self.program is inductor's
        self.program: fx.GraphModule | None = None
        self.first: fx.GraphModule | None = None
        self.key: tuple | None = None  # what the recordings were made for
        self.warmed = False
        self.verify = False  # check the next replay against an eager step
        self.changes = 0  # times the key changed (each one records the step again)
        self.failed: str | None = None  # why the step stays eager
        self.status = "not recorded yet"
        self.gemm_used: str | None = None  # "default" or "onednn", once recorded

    def _key(self, args) -> tuple:
        return (_signature(args), tuple(p.requires_grad for p in self.params),
                self.state() if self.state is not None else ())

    def _loss_and_grads(self, *inputs):
        """The loss and the gradient of each parameter (``None`` for a frozen one)."""
        args = inputs[len(self.params):]
        loss = self.loss_fn(*args)
        trained = [p for p in self.params if p.requires_grad]
        grads = iter(torch.autograd.grad(loss, trained, allow_unused=True))
        return (loss.detach(), *(next(grads) if p.requires_grad else None
                                 for p in self.params))

    def _eager(self, args) -> torch.Tensor:
        loss = self.loss_fn(*args)
        loss.backward()
        return loss

    def _give(self, outputs) -> torch.Tensor:
        """Hand the gradients to the parameters, each in its own storage and with its
        parameter's layout (as autograd's accumulation does: a program may return one
        tensor as the gradient of two parameters, which clipping must not scale twice)."""
        seen = set()
        for p, g in zip(self.params, outputs[1:]):
            if g is not None:
                if g.untyped_storage().data_ptr() in seen or g.stride() != p.stride():
                    g = torch.empty_like(p).copy_(g)
                seen.add(g.untyped_storage().data_ptr())
            p.grad = g
        return outputs[0]

    def _fail(self, reason: str) -> None:
        self.failed, self.program, self.first = reason, None, None
        self.status = f"eager: {reason}"
        logger.warning("traced step: falling back to the eager step: %s", reason)

    def check_next_replay(self) -> None:
        """Check the next replayed step against an eager one on the same generator state
        (``Trainer.fit`` asks at its start: between two fits, Python-side state the
        recording baked in may have changed); a mismatch records the step again."""
        self.verify = self.program is not None

    def _record(self, args) -> fx.GraphModule | None:
        """The step recorded (it runs for real); ``None`` (and eager from now on) if it
        cannot be."""
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
        if self.gemm_choice == "onednn" or self.gemm_used == "onednn":  # decided: from now on
            gemm.use_onednn(module)
        return module

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """The loss of batch ``args`` (detached); every parameter's ``.grad`` set."""
        if self.failed is not None:
            return self._eager(args)
        key = self._key(args)
        if self.program is not None and key == self.key:
            if self.verify:
                return self._give(self._verified(args))
            if self._compiled is not None:
                return self._give(self._first_compiled_call(args))
            with torch.no_grad(), self._inductor_options():
                return self._give(self.program(*self.params, *args))
        if self.program is not None or (self.first is not None and key != self.key):
            self.changes += 1
            if self.changes > MAX_CHANGES:
                self._fail(f"the batch's shapes, the parameters' requires_grad or the "
                           f"modules' train/eval mode changed {self.changes} times")
                return self._eager(args)
            logger.info("traced step: the batch's shapes, the parameters' requires_grad or "
                        "the modules' train/eval mode changed: recording again")
            self._drop()
        if not self.warmed:  # one-off work (a plate-nesting guess): off the training stream
            with forked_rng(self.params[0].device), torch.no_grad():
                self.loss_fn(*args)
            self.warmed = True
        rng = torch.get_rng_state()
        module = self._record(args)
        torch.set_rng_state(rng)  # the recording drew: draw again, for the outputs
        if module is None:
            return self._eager(args)
        with torch.no_grad():
            outputs = module(*self.params, *args)
        if self.first is None:
            self.first, self.key = module, key
        elif (reason := _same_program(self.first, module)) is not None:
            self._fail(reason)
        else:
            self._finish(module)
        return self._give(outputs)

    def _drop(self) -> None:
        self.program, self.first, self.key, self._compiled = None, None, None, None
        self.compiled, self.verify = False, False

    def _verified(self, args):
        """An eager step and the replay on the same generator state; the replay's outputs if
        they agree (bit for bit on torch's default products, within float32 rounding
        otherwise), else the eager ones, and the step is recorded again."""
        self.verify = False
        rng = torch.get_rng_state()
        eager = self._loss_and_grads(*self.params, *args)
        torch.set_rng_state(rng)
        with torch.no_grad(), self._inductor_options():
            replayed = self.program(*self.params, *args)
        exact = self.gemm_used == "default" and not self.compiled
        if all(_agree(a, b, exact) for a, b in zip(eager, replayed)):
            return replayed
        logger.warning("traced step: the recorded step no longer gives the eager step's "
                       "numbers (state the model reads outside its tensors, such as a Python "
                       "attribute, changed since it was recorded): recording it again")
        self._drop()
        return eager

    def _finish(self, module: fx.GraphModule) -> None:
        """Keep ``module`` as the program; choose its matrix products' library."""
        self.first = None
        rewritten = sum(n.target in (gemm.onednn_mm, gemm.onednn_addmm)
                        for n in module.graph.nodes)
        if rewritten:
            note = "matrix products: oneDNN"
        elif self.gemm_choice == "measure" and self.gemm_used is None:
            choice = gemm.choose_gemm(module.graph)
            rewritten = gemm.use_onednn(module) if choice.onednn else 0
            note = choice.describe()
        else:
            note = "matrix products: torch's default"
        self.gemm_used = "onednn" if rewritten else "default"
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
