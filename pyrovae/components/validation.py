"""What values an argument may take: the one home of pyrovae's argument checks.

Each check returns the value when it is allowed and otherwise raises ``ValueError`` with a
message that names the argument, the value seen and what is allowed, e.g. ``"z_dim must be
an integer >= 1, got 0"``. Booleans are never accepted as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum`` (``None``: any integer) and
    <= ``maximum`` (``None``: no limit)."""
    if not isinstance(value, int) or isinstance(value, bool) or (
            minimum is not None and value < minimum) or (
            maximum is not None and value > maximum):
        if maximum is not None:
            allowed = f"an integer in [{minimum}, {maximum}]"
        else:
            allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


MAX_SEED = 2 ** 32 - 1  # what NumPy's and torch's seeding accept


def check_seed(value, name: str = "seed") -> int:
    """``value`` if it is a seed every RNG accepts: an integer in [0, 2**32 - 1]."""
    return check_int(value, name, minimum=0, maximum=MAX_SEED)


def check_positive_float(value, name: str) -> float:
    """``value`` as a float if it is a finite number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_one_of(value, name: str, choices: Iterable) -> object:
    """``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")
    return value
