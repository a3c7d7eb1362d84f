"""What every layer from inference up needs of a model: a model/guide pair.

Two Pyro callables over the same data, with parameters in an ``nn.Module`` (a
``PyroModule``, or plain modules registered with ``pyro.module``) or in ``pyro.param``
statements. pyrovae's :class:`~pyrovae.models.vae.VAE` is one. The estimators, the
evaluation and ``check-kl``/``compare`` only call ``model(*args)`` and ``guide(*args)`` (and
read the traces); the Trainer also needs ``parameters()`` and ``data_shape`` (the shape of
one datum), and a run's job ``likelihood.check``. So inference and training import nothing
from :mod:`pyrovae.models`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ModelGuidePair(Protocol):
    """An object with a Pyro ``model`` and a Pyro ``guide`` taking the same arguments.

    ``model(x)`` samples the latent sites and observes the data; ``guide(x)`` samples the
    same latent sites (Pyro's contract, checked by ``pyro.util.check_model_guide_match``).
    """

    def model(self, *args, **kwargs) -> None: ...

    def guide(self, *args, **kwargs) -> None: ...
