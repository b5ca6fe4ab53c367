"""What the numbers were measured on: the CPU, its cores and torch's threads, the load, the versions, the device, the
precision and the GPU. Every result records it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, dtype_name: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "dtype": dtype_name,
        "gpu": None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line: CPU, cores, GPU, versions, device and precision."""
    gpu = f", GPU {info['gpu']} ({info.get('gpu_memory_gib')} GiB, CUDA {info.get('cuda')})" if info.get("gpu") else ""
    load = f", load average {info['load_average_1min']} at start" if info.get("load_average_1min") is not None else ""
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, torch threads {info['torch_threads']}){gpu}; "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
        f"device {info['device']}, {info['dtype']}{load}"
    )
