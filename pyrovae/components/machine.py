"""What a run or a benchmark ran on: the GPU's name, or the CPU's model and threads (for
``environment.json`` and the benchmarks' tables)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """``"NVIDIA H100 ..."`` on CUDA; ``"CPU (AMD EPYC, x86_64, 2 threads)"`` otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {platform.machine()}, {torch.get_num_threads()} threads)"
