"""Helpers for the bad-input suite: every user error must end in one clear line.

* ``cli_error(*args)`` runs ``permerge.cli.main`` in this process (fast: no torch import per
  case) and asserts a non-zero exit, exactly one non-empty stderr line starting with
  ``error:`` and no traceback; it returns that line. A few cases also run the real console
  entry point in a subprocess (``run_subprocess``) to cover the process exit code.
* ``api_error(exc_type, fn, *a, **kw)`` asserts ``fn`` raises ``exc_type`` (a
  :class:`PermergeError` subclass) with a one-line message, and returns the message.
* ``tiny_pair`` is two untrained ``mlp:16`` checkpoints labelled MNIST / Fashion-MNIST: bad
  inputs are rejected before training quality matters, so no training is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ._helpers import one_line, save_tiny


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    from permerge.cli import main

    def run(*args: str | Path, code: int = 2) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert e.value.code == code, (e.value.code, err)
        assert "Traceback" not in err
        line = one_line(err)
        assert line.startswith("error: "), line
        return line

    return run


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("tiny-pair")
    return save_tiny(out / "a", seed=0, dataset="mnist"), save_tiny(out / "b", seed=1, dataset="fashion-mnist")
