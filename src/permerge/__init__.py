"""permerge: merge neural networks trained on different datasets (re-basin + reduced data).

Entry points: :mod:`permerge.api` (plain functions), the ``permerge`` command
(:mod:`permerge.cli`), :mod:`permerge.reproduce` (experiment grids).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("permerge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["__version__"]
