"""Plug-ins: your own modules that register priors, likelihoods or guides by name.

A plug-in is any Python module that registers components when it is imported::

    # my_module.py
    from pyrovae import PRIORS, Prior

    @PRIORS.register("my_prior")
    class MyPrior(Prior): ...

    $ pyrovae train --plugin my_module --prior my_prior

``--plugin`` (the config field ``plugin``, a list) takes module names, importable from
``sys.path`` or else from the current folder, or paths to ``.py`` files. A run's
``config.json`` records them, so ``TrainConfig.validate`` (and with it ``load_run``,
``pyrovae sample``, ``evaluate`` and ``--resume``) imports them again before it looks a name
up. Importing twice is harmless: a module already imported (also as ``__main__``, from the
same file) is not run again, so its registrations happen once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def load_plugin(spec: str) -> ModuleType:
    """Import the plug-in ``spec`` (a module name or a ``.py`` path) once; return it.

    Raises ``ValueError`` naming the plug-in when it cannot be found or its import fails
    (a missing module, or an error in its own code: one line, with the file and line of a
    syntax error).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"plugin must be a module name or a path to a .py file, got {spec!r}")
    if spec.endswith(".py"):
        return _load_file(Path(spec))
    module = _import(spec)
    cwd = os.getcwd()
    if module is None and cwd not in sys.path:  # a console script does not search the cwd
        sys.path.append(cwd)
        module = _import(spec)
    if module is None:
        raise ValueError(f"plugin {spec!r} not found: no module of that name on sys.path or "
                         f"in the current folder {cwd}; pass an importable module name or a "
                         "path to a .py file")
    return module


def _import(spec: str) -> ModuleType | None:
    """The module ``spec``; ``None`` if it does not exist; ``ValueError`` if it exists but
    needs a module that does not."""
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        if error.name is not None and (spec == error.name or spec.startswith(error.name + ".")):
            return None
        raise ValueError(f"plugin {spec!r} failed to import: {error}") from None
    except Exception as error:  # its own code failed: a syntax error, a missing name, ...
        raise ValueError(f"plugin {spec!r} failed to import: {_describe(error)}") from None


def _describe(error: Exception) -> str:
    """One line: the error's type and message, and for a syntax error its file and line."""
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    return f"{type(error).__name__}: {error}"


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ValueError(f"plugin {str(path)!r} not found: no such file")
    resolved = path.resolve()
    for module in list(sys.modules.values()):  # already imported, maybe as __main__
        file = getattr(module, "__file__", None)
        if file is not None and Path(file).resolve() == resolved:
            return module
    name = path.stem
    if name in sys.modules:
        raise ValueError(f"plugin {str(path)!r}: another module named {name!r} is already "
                         "imported; rename the file")
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ValueError(f"plugin {str(path)!r} failed to import: {_describe(error)}") \
            from None
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugins(specs: Sequence[str]) -> list[ModuleType]:
    """:func:`load_plugin` for each of ``specs`` (a list or tuple of strings), in order."""
    if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
        raise ValueError(f"plugin must be a list of module names or .py paths, got {specs!r}")
    return [load_plugin(spec) for spec in specs]


def plugins_in_argv(argv: Sequence[str]) -> list[str]:
    """The values of every ``--plugin A [B ...]`` / ``--plugin=A`` in a command line.

    Read before the argument parser is built, so plug-ins register their names before the
    parser lists the registries' choices in ``--help``.
    """
    found, taking = [], False
    for arg in argv:
        if arg == "--plugin":
            taking = True
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
            taking = False
        elif taking and not arg.startswith("-"):
            found.append(arg)
        else:
            taking = False
    return found
