"""``permerge reproduce``: the paper's experiments as resumable grids of independent runs.

config.py (validated YAML) -> plan.py (expand into tasks) -> executors.py (run them: local
process pool or Ray) -> tasks.py (one run, content-addressed, atomic) -> report.py (tables,
plots, analysis).
"""

from .config import ExperimentConfig, builtin_experiments, load_experiment
from .executors import get_executor, register_executor
from .tasks import RunContext, Task

__all__ = [
    "ExperimentConfig",
    "RunContext",
    "Task",
    "builtin_experiments",
    "get_executor",
    "load_experiment",
    "register_executor",
]
