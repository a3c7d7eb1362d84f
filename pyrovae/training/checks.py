"""The Trainer's one-off checks, outside the training step: its options, the device it is
asked for, the data ``fit`` and ``evaluate`` are given; and the error a non-finite step
raises (``on_nan="stop"``).

Every check raises ``TypeError``/``ValueError`` with one line that names the bad value and
says what would be accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyrovae.components.data import check_images, check_tensor_data
from pyrovae.components.validation import check_int, check_positive_float
from pyrovae.inference.estimators import Estimator
from pyrovae.inference.pair import Batch, as_args


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; refuses CUDA on a machine without it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; "
                         "use --device cpu or auto")
    return resolved


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or infinite loss or gradient (with ``on_nan="stop"``)."""

    def __init__(self, epoch: int, step: int, bad_steps: int, steps: int):
        self.epoch, self.step, self.bad_steps, self.steps = epoch, step, bad_steps, steps
        kept = (f"the checkpoint of epoch {epoch - 1} is the last good state" if epoch > 1
                else "no epoch finished, so no checkpoint of this run was written")
        super().__init__(
            f"non-finite loss or gradient in epoch {epoch} at step {step} ({bad_steps} of "
            f"{steps} steps of the epoch); stopped, {kept}. Lower --lr, set --clip-norm, or "
            "pass --on-nan skip")


def check_lr(lr) -> None:
    """``ValueError`` unless ``lr`` is a finite number > 0."""
    check_positive_float(lr, "lr")


def check_adam(adam_betas, adam_eps, clip_norm) -> None:
    """``ValueError`` unless Adam's two decay rates are in [0, 1), its eps a finite number
    > 0, and the gradient clip ``None`` or > 0."""
    if not (len(adam_betas) == 2 and all(0.0 <= b < 1.0 for b in adam_betas)):
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {adam_betas!r}")
    check_positive_float(adam_eps, "adam_eps")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")


def check_kl_weight(beta, kl_warmup, estimator: Estimator) -> tuple[float, int]:
    """``(beta, kl_warmup)`` checked: beta a finite number > 0, kl_warmup an integer >= 0,
    and neither with a score-function estimator (Pyro's scale would also scale the score)."""
    check_positive_float(beta, "beta")
    check_int(kl_warmup, "kl_warmup", minimum=0)  # epochs
    if estimator.score_function and (beta != 1 or kl_warmup):
        raise ValueError("beta != 1 and kl_warmup need pathwise gradients: the KL weight "
                         "scales the guide's score-function term too; drop --score-function")
    return float(beta), kl_warmup


def check_fit_data(data: Batch, what: str, data_shape: Sequence[int] | None,
                   param: torch.Tensor | None) -> None:
    """``TypeError``/``ValueError`` unless ``data`` fits the model: non-empty tensors with
    equal dim 0, on ``param``'s device (the CPU before the model has parameters); the data
    (the first tensor) finite, of ``param``'s dtype when floating, and of ``data_shape``
    when the model declares one (then images ``(N, C, H, W)``). ``what`` names the data in
    the message."""
    args = as_args(data)
    if not args or not all(isinstance(t, torch.Tensor) for t in args):
        raise TypeError(f"{what} must be a tensor or a tuple of tensors, got "
                        f"{type(data).__name__}")
    x = args[0]
    if data_shape is not None and len(data_shape) == 3:
        check_images(x, what)
    else:
        check_tensor_data(x, what)
    if any(t.dim() == 0 or len(t) != len(x) for t in args):
        raise ValueError(f"{what}: every tensor needs the data along dim 0, got shapes "
                         f"{[tuple(t.shape) for t in args]}")
    if param is not None and x.is_floating_point() and x.dtype != param.dtype:
        raise TypeError(f"{what} has dtype {x.dtype}, the model {param.dtype}; convert "
                        f"with .to({param.dtype})")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise ValueError(f"{what} has data of shape {tuple(x.shape[1:])}, the model "
                         f"expects {tuple(data_shape)}")
    device = param.device if param is not None else torch.device("cpu")
    for t in args:
        if t.device != device:
            raise ValueError(f"{what} is on {t.device}, the model on {device}; move "
                             "the data once with .to(device)")
