"""Where an STE step spends its time (cProfile), MNIST vs Fashion-MNIST MLPs 3x512.

Prints the STE timing breakdown that ``ste_method`` reports (seconds per step, projection
seconds per step) of a run without the profiler, then the top functions by CPU time of a
second, profiled run (``--top 0``: timing only). Source models come from the
same cache as ``ste_merge.py``.

    PERMERGE_DATA=../shared/data python benchmarks/ste_profile.py --steps 100 --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ste_merge import source_model  # noqa: E402

from permerge import api  # noqa: E402
from permerge.merge.core import align  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a = api.as_checkpoint(source_model("mnist", 0, 10))
    b = api.as_checkpoint(source_model("fashion-mnist", 1, 10))
    data = api.load_merge_data([f"mnist@{args.ipc}", f"fashion-mnist@{args.ipc}"])
    options = {"steps": args.steps, "lr": 0.5}
    # the timing comes from a run without the profiler (cProfile adds a few ms per step)
    t0 = time.perf_counter()
    _, _, info = align(a, b, "ste", data, options=options, progress=False)
    print(
        f"STE {args.steps} steps: {time.perf_counter() - t0:.1f} s; {info['seconds_per_step'] * 1e3:.1f} ms/step, "
        f"projection {info['projection_seconds_per_step'] * 1e3:.1f} ms/step, "
        f"initial WM {info['initial_wm_seconds']:.2f} s (no profiler)"
    )
    print("assignment:", info.get("assignment"))
    if args.top > 0:
        prof = cProfile.Profile(time.process_time)  # CPU time: robust to other jobs on the machine
        prof.enable()
        align(a, b, "ste", data, options=options, progress=False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
