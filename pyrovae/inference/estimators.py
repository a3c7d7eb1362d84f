"""Every registered estimator, by name: the base module and each family, imported in one place.

:mod:`~pyrovae.inference.elbo` holds the base class and the registry
:data:`ESTIMATORS`; :mod:`~pyrovae.inference.trace_elbo` the KL family (``trace``,
``tracegraph``, ``analytic``); :mod:`~pyrovae.inference.importance` the
importance-weighted one (``renyi``, ``iwae``, ``iwae_dreg``). Importing this module
registers them all; :func:`build_estimator` builds one by name.
"""

from __future__ import annotations

from pyrovae.inference import importance, trace_elbo  # noqa: F401  (register their names)
from pyrovae.inference.elbo import (  # noqa: F401  (re-exported)
    ESTIMATORS,
    Estimator,
    EstimatorAxes,
    score_function_estimators,
)


def build_estimator(name: str, num_particles: int = 1, **options) -> Estimator:
    """Instantiate the estimator registered as ``name``.

    ``options`` (``alpha``, ``score_function``, ...) go to the constructor; those it does not
    declare are left out, so one config can hold every estimator's options (``alpha`` only
    reaches the Renyi estimator, for instance); one that no estimator declares raises
    ``ValueError``.
    """
    return ESTIMATORS.build(name, num_particles=num_particles, **options)
