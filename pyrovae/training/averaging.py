"""Polyak averaging: an exponential moving average (EMA) of the weights, for evaluation.

After every optimiser step, each averaged tensor moves towards its parameter:

    W_ema <- decay * W_ema + (1 - decay) * W          (W_ema starts as the first W)

so it averages roughly the last 1 / (1 - decay) steps (1,000 at decay 0.999). The update is
``torch.optim.swa_utils.get_ema_multi_avg_fn``'s one ``_foreach_lerp_`` over all parameters:
on the device, no host sync, fine after a CUDA-graph replay. The averaged weights do not train:
:meth:`WeightAverage.swapped` puts them in the parameters for a ``with`` block (evaluation,
sampling, saving a model) and the trained weights back afterwards.

Training is unchanged by averaging (same parameters, same random draws): the average is a
second copy of the weights, kept in the trainer's checkpoint, so a resumed run continues the
same average.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


def check_decay(decay) -> float:
    """``decay`` as a float in (0, 1), or a ``ValueError`` that says what it got."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or \
            not math.isfinite(decay) or not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be a number in (0, 1), e.g. 0.999, got {decay!r}")
    return float(decay)


class WeightAverage:
    """An exponential moving average of ``params`` (floating tensors, any devices).

    Args:
        params: the trained parameters, in a fixed order (the stepper's).
        decay: the weight of the old average at each update, in (0, 1).
    """

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.decay = check_decay(decay)
        self.params = list(params)
        if not self.params:
            raise ValueError("nothing to average: no parameters")
        self.averages = [p.detach().clone() for p in self.params]
        self._update = get_ema_multi_avg_fn(self.decay)

    def update(self) -> None:
        """One step of the average towards the current parameters (after an optimiser step)."""
        self._update(self.averages, [p.detach() for p in self.params], None)

    @contextlib.contextmanager
    def swapped(self):
        """Inside the block the parameters hold the averaged weights; afterwards the trained
        ones again (also when the block raises)."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.averages)
        try:
            yield self
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], trained)

    def state_dict(self) -> dict:
        """``{"decay": float, "averages": [tensor, ...]}`` (copies, in parameter order)."""
        return {"decay": self.decay, "averages": [a.detach().clone() for a in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the decay and the tensors' shapes must match."""
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the checkpoint averaged the weights with decay "
                             f"{state['decay']}, this run asks for {self.decay}; pass the "
                             "same --ema-decay to resume")
        saved = state["averages"]
        shapes = [tuple(a.shape) for a in self.averages]
        if [tuple(s.shape) for s in saved] != shapes:
            raise ValueError("the checkpoint's averaged weights do not fit this model's "
                             f"parameters ({len(saved)} tensors vs {len(shapes)})")
        with torch.no_grad():
            for average, value in zip(self.averages, saved):
                average.copy_(value)
