"""Plain helpers for the bad-input suite (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from permerge.checkpoint import save_checkpoint
from permerge.errors import PermergeError
from permerge.models import build_model, model_config_for


def save_tiny(
    out: Path, arch: str = "mlp:16", in_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, dataset: str = "mnist"
) -> Path:
    """An untrained checkpoint of ``arch`` (fixed seed) that names ``dataset`` as its own."""
    torch.manual_seed(seed)
    cfg = model_config_for(arch, in_shape)
    return save_checkpoint(out, build_model(cfg), cfg, {"dataset": dataset})


def one_line(text: str) -> str:
    """The one error line; ``warning:``/``note:`` lines before it (e.g. a budget warning printed
    before the work failed) are allowed, anything else (a traceback) is not."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("warning: ", "note: "))] or lines
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    return lines[0]


def api_error(exc_type: type[PermergeError], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    assert issubclass(exc_type, PermergeError)
    with pytest.raises(exc_type) as e:
        fn(*args, **kwargs)
    return one_line(str(e.value))


def run_subprocess(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it (``python -m permerge.cli``)."""
    full_env = {**os.environ, "PERMERGE_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "permerge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def assert_subprocess_user_error(p: subprocess.CompletedProcess[str], needle: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr, p.stdout, p.args)
    assert "Traceback" not in p.stderr
    line = one_line(p.stderr)
    assert line.startswith("error: ") and needle in line, line
    return line
