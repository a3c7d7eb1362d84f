"""Random-number state: what a checkpoint saves, and forks for side work that must not move
the training streams (evaluation, figures, capability checks)."""

from __future__ import annotations

import contextlib

import pyro
import torch


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) random states."""
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is available)."""
    pyro.util.set_rng_state({k: v for k, v in state.items() if k != "cuda"})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def forked_rng(device: torch.device | torch.Tensor):
    """Run the block on a copy of the CPU stream and, for a CUDA ``device`` (or a tensor on
    one), of that device's stream: both are as before when the block ends. (A CUDA device
    named on a machine without CUDA forks the CPU stream only: nothing can draw there.)"""
    if isinstance(device, torch.Tensor):
        device = device.device
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    with torch.random.fork_rng(devices=[device] if cuda else []):
        yield
