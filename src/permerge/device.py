"""``--device`` names to torch devices: one rule for the CLI, the API and the grids."""

from __future__ import annotations

import torch

from .errors import PermergeError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PermergeError("--device cuda requested but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise PermergeError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)
