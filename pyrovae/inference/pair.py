"""What every layer from inference up needs of a model: a model/guide pair.

A pair is two Pyro callables taking the same arguments (the data first, then any extras such
as a condition), with parameters held by an ``nn.Module`` (a ``PyroModule``, or plain
modules registered with ``pyro.module``) or created by ``pyro.param`` statements, maybe
lazily on the first call. pyrovae's :class:`~pyrovae.models.vae.VAE` is one; so is Pyro's
``examples/vae`` model, or two functions.

:class:`PyroPair` turns any of them into what the Trainer, the evaluation and ``check-kl`` /
``compare`` use: :meth:`PyroPair.setup` runs the guide and the model once on an example
batch (as ``pyro.infer.SVI`` finds parameters on its first step), so every parameter, also
those created on that call, is known before the optimiser is built; Pyro parameter-store
tensors that are not ``nn.Parameter``\\ s become ones (as ``PyroModule`` does), so DDP and
a CUDA graph see them. Its ``state_dict`` is the owning module's (same keys) plus
``pyro.param:NAME`` entries for store parameters no module owns.

Data arguments: the upper layers pass a batch as one tensor or a tuple of tensors
(``model(*args)``), every tensor with the data along dim 0; :func:`as_args`, :func:`num_data`
and :func:`take` handle both. So inference and training import nothing from
:mod:`pyrovae.models`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import pyro
import pyro.poutine as poutine
import torch
from pyro.params.param_store import ParamStoreDict
from torch import nn

from pyrovae.components.rng import forked_rng
from pyrovae.inference.statistics import module_groups

STORE_PREFIX = "pyro.param:"  # state_dict keys of parameters that only Pyro's store holds
MODULE_DIVIDER = "$$$"        # pyro.module(name, m) stores m's parameters as name$$$param


@runtime_checkable
class ModelGuidePair(Protocol):
    """An object with a Pyro ``model`` and a Pyro ``guide`` taking the same arguments.

    ``model(*args)`` samples the latent sites and observes the data; ``guide(*args)`` samples
    the same latent sites (Pyro's contract, checked by ``pyro.util.check_model_guide_match``).
    """

    def model(self, *args, **kwargs) -> None: ...

    def guide(self, *args, **kwargs) -> None: ...


Batch = torch.Tensor | Sequence[torch.Tensor]


def as_args(batch: Batch) -> tuple[torch.Tensor, ...]:
    """A batch as the positional arguments of ``model``/``guide``: ``(x,)`` or the tuple."""
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def num_data(args: Batch) -> int:
    """The number of data in a batch (dim 0 of its first tensor)."""
    return len(as_args(args)[0])


def take(args: Batch, index) -> tuple[torch.Tensor, ...]:
    """Every tensor of a batch indexed along dim 0 (a slice or an index tensor)."""
    return tuple(t[index] for t in as_args(args))


class PyroPair(nn.Module):
    """A user's model/guide pair with every parameter it uses (see the module docstring).

    Args:
        model: an object with ``model`` and ``guide`` methods (an ``nn.Module`` such as
            Pyro's ``examples/vae`` VAE, or any object), or the model callable itself.
        guide: the guide callable, when ``model`` is a callable.
        data_shape: the shape of one datum, for the Trainer's input check (default: the
            owner's ``data_shape`` attribute, else unchecked).

    The owner (the object, or the ``nn.Module`` both bound methods belong to) is a
    sub-module when it is an ``nn.Module``: its parameters count without any
    ``pyro.module`` call, ``.to(device)`` and ``.eval()`` reach it.
    """

    def __init__(self, model, guide: Callable | None = None,
                 data_shape: Sequence[int] | None = None):
        super().__init__()
        if guide is None:
            owner = model
            if not (callable(getattr(owner, "model", None))
                    and callable(getattr(owner, "guide", None))):
                raise TypeError(f"{type(owner).__name__} has no model and guide methods: "
                                "pass an object with both, or model=... and guide=...")
            model, guide = owner.model, owner.guide
        else:
            if not (callable(model) and callable(guide)):
                raise TypeError("model and guide must both be callables (Pyro programs)")
            owner = getattr(model, "__self__", None)
            if owner is None or owner is not getattr(guide, "__self__", None):
                owner = None
        # plain attributes: a callable module (or the owner again) is not a second child
        self.__dict__.update(_model=model, _guide=guide, _owner_object=owner)
        self.owner = owner if isinstance(owner, nn.Module) else None
        shape = data_shape if data_shape is not None else getattr(owner, "data_shape", None)
        self.data_shape = tuple(shape) if shape is not None else None
        self.store_parameters = nn.ParameterList()  # store tensors no owner module holds
        self._store: dict[str, nn.Parameter] = {}    # Pyro name -> the tensor it optimises
        self._constraints: dict[str, object] = {}
        self.model_parameter_names: set[str] = set()
        self.guide_parameter_names: set[str] = set()
        self._names_by_id: dict[int, str] = {}      # every parameter the traces reached
        self._store_names: set[str] = set()         # the store's names after setup
        self._example: tuple = ()                   # the setup batch
        self.is_set_up = False

    def model(self, *args, **kwargs):
        self.install()
        return self._model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        self.install()
        return self._guide(*args, **kwargs)

    @property
    def wrapped(self):
        """The object given (the owner), or this pair when it was given two callables."""
        return self._owner_object if self._owner_object is not None else self

    def setup(self, *args, **kwargs) -> PyroPair:
        """Run the guide, then the model on the guide's draws, once on ``args`` (an example
        batch) to find every parameter they use, creating lazy ones. No gradients, on a
        forked RNG (the caller's random streams do not move). Returns ``self``."""
        self.install()
        guide_trace, model_trace = self._traces(*args, **kwargs)
        self._example = args
        owned = {id(p) for p in self.owner.parameters()} if self.owner is not None else set()
        store = pyro.get_param_store()
        for names, trace in ((self.guide_parameter_names, guide_trace),
                             (self.model_parameter_names, model_trace)):
            for name, site in trace.nodes.items():
                if site["type"] != "param":
                    continue
                names.add(name)
                tensor = store._params[name]  # the unconstrained leaf Pyro optimises
                if id(tensor) in owned or name in self._store:
                    self._names_by_id.setdefault(id(tensor), name)
                    continue
                self._adopt(store, name, tensor)
                self._names_by_id[id(self._store[name])] = name
        self._store_names = set(store.keys())
        self.is_set_up = True
        return self

    def new_store_names(self) -> list[str]:
        """Parameters the model or guide created after :meth:`setup` (an optimiser built at
        setup does not train them). Cheap when the store has no name it had not then; else
        one traced run on the setup batch tells this pair's new names from another's."""
        if not self.is_set_up:
            return []
        store_names = set(pyro.get_param_store().keys())
        if store_names <= self._store_names:
            return []
        guide_trace, model_trace = self._traces(*self._example)
        used = {name for trace in (guide_trace, model_trace)
                for name, site in trace.nodes.items() if site["type"] == "param"}
        self._store_names |= store_names - used  # another model's: not asked about again
        return sorted(used - self.guide_parameter_names - self.model_parameter_names)

    def _traces(self, *args, **kwargs):
        """One run of the guide, then of the model on its draws: no gradients, validation
        off (as in the step: it may see NaN parameters), a forked RNG, hidden from handlers."""
        with torch.no_grad(), forked_rng(_device_of(args)), poutine.block(), \
                pyro.validation_enabled(False):
            guide_trace = poutine.trace(self.guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)
                                        ).get_trace(*args, **kwargs)
        return guide_trace, model_trace

    def _adopt(self, store: ParamStoreDict, name: str, tensor: torch.Tensor) -> None:
        """Hold the store's tensor ``name`` (as an ``nn.Parameter``, in the store too: the
        same promotion ``PyroModule.__getattr__`` makes in Pyro 1.9)."""
        if not isinstance(tensor, nn.Parameter):
            tensor = nn.Parameter(tensor)
            store._params[name] = tensor
            store._param_to_name[tensor] = name
        self._store[name] = tensor
        self._constraints[name] = store._constraints[name]
        self.store_parameters.append(tensor)

    def install(self) -> None:
        """Put this pair's store parameters back into Pyro's (global) parameter store, e.g.
        after ``pyro.clear_param_store()``, so the model's ``pyro.param`` calls find them."""
        store = pyro.get_param_store()
        for name, tensor in self._store.items():
            if store._params.get(name) is not tensor:
                store._params[name] = tensor
                store._param_to_name[tensor] = name
                store._constraints[name] = self._constraints[name]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for gradient statistics: the owner's top-level children
        (``encoder``, ``decoder``, ...), then store parameters by their ``pyro.module`` name,
        else by the program that uses them (``guide`` or ``model``)."""
        groups = module_groups(self.owner) if self.owner is not None else {}
        for name, tensor in self._store.items():
            groups.setdefault(self._group_of(name), []).append(tensor)
        if self.owner is not None:  # owner parameters no child holds: by their Pyro name
            grouped = {id(p) for params in groups.values() for p in params}
            for p in self.owner.parameters():
                if id(p) not in grouped:
                    name = self._names_by_id.get(id(p))
                    groups.setdefault(self._group_of(name) if name else "other", []).append(p)
        return groups

    def _group_of(self, name: str) -> str:
        """A store parameter's group: its ``pyro.module`` name, else the program using it."""
        if MODULE_DIVIDER in name:
            return name.split(MODULE_DIVIDER)[0]
        return "guide" if name in self.guide_parameter_names else "model"

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The owner's ``state_dict`` (its own keys) and ``pyro.param:NAME`` for each store
        parameter (unconstrained values), each key after ``prefix``."""
        state = {} if destination is None else destination
        if self.owner is not None:
            self.owner.state_dict(destination=state, prefix=prefix, keep_vars=keep_vars)
        for name, tensor in self._store.items():
            state[prefix + STORE_PREFIX + name] = tensor if keep_vars else tensor.detach()
        return state

    def load_state_dict(self, state: dict, strict: bool = True):
        """Load what :meth:`state_dict` wrote (in place: optimisers keep their tensors)."""
        own = {k: v for k, v in state.items() if k.startswith(STORE_PREFIX)}
        rest = {k: v for k, v in state.items() if not k.startswith(STORE_PREFIX)}
        expected = {STORE_PREFIX + name for name in self._store}
        if strict and set(own) != expected:
            missing, unexpected = sorted(expected - set(own)), sorted(set(own) - expected)
            raise RuntimeError(f"state does not match the pair's Pyro parameters: missing "
                               f"{missing}, unexpected {unexpected} (was the pair set up on "
                               "an example batch first?)")
        with torch.no_grad():
            for key, value in own.items():
                name = key[len(STORE_PREFIX):]
                if name in self._store:
                    self._store[name].copy_(value)
        if self.owner is not None:
            return self.owner.load_state_dict(rest, strict=strict)
        if strict and rest:
            raise RuntimeError(f"unexpected keys for a pair without a module: {sorted(rest)}")
        return None


def as_pair(pair=None, model: Callable | None = None, guide: Callable | None = None
            ) -> PyroPair:
    """``pair`` (an object with ``model``/``guide``) or ``model=``/``guide=`` callables as a
    :class:`PyroPair` (a ``PyroPair`` is returned as it is)."""
    if isinstance(pair, PyroPair) and model is None and guide is None:
        return pair
    if pair is not None and (model is not None or guide is not None):
        raise TypeError("pass either a pair (an object with model and guide) or model= and "
                        "guide=, not both")
    if pair is not None:
        return PyroPair(pair)
    if model is None or guide is None:
        raise TypeError("a model/guide pair is needed: pass an object with model and guide "
                        "methods, or both model= and guide=")
    return PyroPair(model, guide)


def set_up_pair(pair, args: Batch) -> PyroPair:
    """``pair`` as a :class:`PyroPair` set up on ``args`` (an example batch), for code that
    needs every parameter of any pair (gradient statistics): a set-up pair as it is."""
    wrapped = as_pair(pair)
    if not wrapped.is_set_up:
        wrapped.setup(*as_args(args))
    return wrapped


def _device_of(args) -> torch.device:
    """The device of the first tensor among ``args`` (CPU if none)."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    return torch.device("cpu")
