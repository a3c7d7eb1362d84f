"""The statistics that ``check-kl``, ``compare`` and the evaluation share, in one place.

- :class:`Moments`: running mean and variance (Welford) of equally shaped tensors;
- :func:`parameter_groups` and :func:`grouped_gradients`: the gradient of a loss, flattened
  per top-level part of the model (encoder, decoder, a learnable prior, ...);
- :func:`z_scores`, :func:`student_t_quantile` (``scipy.stats.t``) for paired tests;
- :func:`standard_error` of a per-datum mean.
"""

from __future__ import annotations

import math

import torch


class Moments:
    """Running mean and variance (Welford) of equally shaped tensors, accumulated in float64."""

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self._m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (value - self.mean)

    @property
    def var(self) -> torch.Tensor:
        """Unbiased per-element variance of one value."""
        return self._m2 / (self.n - 1)

    @property
    def se(self) -> torch.Tensor:
        """Standard error of the mean."""
        return (self.var / self.n).sqrt()


def parameter_groups(pair) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters of each part of a model/guide pair: its own ``parameter_groups()``
    (a :class:`~pyrovae.inference.pair.PyroPair`'s), else :func:`module_groups`, with the
    parameters no part holds (a module's own ``nn.Parameter`` attributes) as ``"other"``."""
    own = getattr(pair, "parameter_groups", None)
    if callable(own):
        return own()
    groups = module_groups(pair)
    grouped = {id(p) for params in groups.values() for p in params}
    rest = [p for p in pair.parameters() if id(p) not in grouped]
    return {**groups, "other": rest} if rest else groups


def module_groups(module: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters of each top-level part of a module (encoder, decoder, prior, ...).

    A wrapper whose parameters all sit in one child (``PackedCVAE`` around its CVAE) is
    looked through, so the parts are the wrapped model's."""
    while not list(module.parameters(recurse=False)):
        holders = [child for child in module.children() if list(child.parameters())]
        if len(holders) != 1:
            break
        module = holders[0]
    groups = {name: list(child.parameters()) for name, child in module.named_children()}
    return {name: params for name, params in groups.items() if params}


def grouped_gradients(loss: torch.Tensor, groups: dict[str, list[torch.nn.Parameter]],
                      retain_graph: bool = False) -> dict[str, torch.Tensor]:
    """d loss / d theta for each group's parameters, flattened and concatenated, ``(m_g,)``
    per group (zeros for parameters the loss does not reach)."""
    params = [p for group in groups.values() for p in group]
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params)]
    out, start = {}, 0
    for name, group in groups.items():
        out[name] = torch.cat(flat[start:start + len(group)])
        start += len(group)
    return out


def student_t_quantile(upper: float, dof: int) -> float:
    """t with P(T > t) = ``upper`` for Student's T with ``dof`` degrees of freedom."""
    from scipy import stats  # imported here: scipy.stats takes 1.4 s to import

    return float(stats.t.isf(upper, dof))


def z_scores(mean: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """mean / se, with 0 where both are 0 (a difference that is exactly 0 on every draw)."""
    return torch.where(se > 0, mean / se.clamp_min(1e-300),
                       torch.where(mean == 0, 0.0, math.inf))


def standard_error(values: torch.Tensor) -> float:
    """S.e. of the mean of a per-datum tensor: sd / sqrt(N) (nan for one datum)."""
    n = len(values)
    return float(values.std()) / math.sqrt(n) if n > 1 else math.nan
