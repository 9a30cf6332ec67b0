"""permerge: merge neural networks trained on different datasets (re-basin + reduced data).

Entry points: :mod:`permerge.api` (plain functions), the ``permerge`` command
(:mod:`permerge.cli`), :mod:`permerge.reproduce` (experiment grids).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("permerge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

# Layers above ``data`` register the dataset kinds they define (``reduced:PATH`` comes from
# ``permerge.reduce``); importing them here makes every spec work from any entry point while
# ``permerge.data`` imports nothing above it.
from . import reduce as _reduce  # noqa: E402, F401

__all__ = ["__version__"]
