"""User-facing errors.

Every problem caused by the user's input (a bad file, an unknown name, mismatched models)
raises a :class:`PermergeError`. The CLI prints its message on one line and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class PermergeError(Exception):
    """Base class for errors the user can fix."""


class DataError(PermergeError):
    """A dataset spec, file or download is unusable."""


class ModelError(PermergeError):
    """A model file, config or pair of models is unusable."""


class AlignmentError(PermergeError):
    """A permutation spec cannot be derived or applied."""


class OutputError(PermergeError):
    """An output file or folder cannot be created or written (read-only, a file in the way)."""


class ConfigError(PermergeError):
    """An experiment config (YAML) is invalid."""


class DivergedError(PermergeError, FloatingPointError):
    """An optimisation diverged (non-finite loss, weights or images): nothing is saved."""


class TrainingError(DivergedError):
    """Training diverged (non-finite loss or exploded weights): nothing is saved."""


def first_error(e: ValidationError) -> tuple[str, str]:
    """``(where, message)`` of pydantic's first error, ``where`` dotted (``merges.0.options.lr``)
    or empty for a model-level check: the one way a validation report becomes one line."""
    err = e.errors()[0]
    msg = str(err["msg"])
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])  # our own check's words, without pydantic's "Value error, "
    return ".".join(str(p) for p in err["loc"]), msg
