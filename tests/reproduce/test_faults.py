"""Faults in the local process pool, for real: a worker killed by the OS (as the OOM killer
does), Ctrl-C (SIGINT to the process group or to the command) and ``kill`` (SIGTERM).

A dead worker used to end the grid with a ``BrokenProcessPool`` traceback; Ctrl-C used to
wait for the runs in flight to finish. Now the runs that were in the pool are reported as
failed (exit status 1, the rest of the grid goes on, a rerun retries them), and Ctrl-C stops
the workers at once (exit status 130). A ``kill -9`` of the command itself, where nothing runs
in it to stop anyone, used to orphan the workers and the resource tracker for minutes: they now
die with it (parent-death signal plus a watchdog in each worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _procs import alive, children, default_sigint, descendants

pytestmark = pytest.mark.slow

GRID = (
    "name: faults\nmodel: 'mlp:64'\npairs: [['mnist@300', 'fashion-mnist@300']]\nseeds: [0, 1]\n"
    "train: {epochs: 150, batch_size: 50}\nmerges: [{method: wm}]\nbaselines: {joint: false, reduced_only: false}\n"
)


def _workers(pid: int) -> list[int]:
    """Pids of the pool's worker processes (children of ``pid`` running multiprocessing's spawn)."""
    return [c for c, cmdline in children(pid).items() if b"multiprocessing.spawn" in cmdline]


Started = tuple[subprocess.Popen[str], list[str], dict[str, str]]


def _start(tmp_path: Path, shared_data: Path, **popen: object) -> Started:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(GRID)
    env = {**os.environ, "PERMERGE_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "permerge", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--workers", "2"]
    cmd += ["--json"]
    proc = subprocess.Popen(  # type: ignore[call-overload]
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **popen
    )
    return proc, cmd, env


def _wait_for_workers(proc: subprocess.Popen[str], n: int = 2) -> list[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        pids = _workers(proc.pid)
        if len(pids) >= n and all(_loaded_torch(p) for p in pids):
            # torch is the slow import (seconds on a loaded machine; a signal during it is
            # a traceback by design); the rest is quick, then runs are under way (~30 s each)
            time.sleep(3.0)
            return pids
        time.sleep(0.2)
    pytest.fail("the pool's workers did not start")


def _loaded_torch(pid: int) -> bool:
    """Whether a process has mapped torch's core library (its import is well under way)."""
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_a_killed_worker_fails_its_runs_not_the_grid(tmp_path: Path, shared_data: Path) -> None:
    proc, cmd, env = _start(tmp_path, shared_data)
    pids = _wait_for_workers(proc)
    os.kill(pids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    r = json.loads(out)
    assert r["failed"] >= 1
    assert "worker process died" in (tmp_path / "o" / "results.md").read_text()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["failed"] == 0  # the rerun retried what the dead worker lost


@pytest.mark.parametrize("target", ["group", "main", "term"])
def test_ctrl_c_stops_the_workers_at_once(tmp_path: Path, shared_data: Path, target: str) -> None:
    """``group``: a terminal's Ctrl-C; ``main``: ``kill -INT`` of the command, which used to
    wait for the runs in flight; ``term``: ``kill`` (SIGTERM), which used to leave the workers
    running as orphans."""
    proc, _, _ = _start(tmp_path, shared_data, start_new_session=True)
    pids = _wait_for_workers(proc)
    t0 = time.monotonic()
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM if target == "term" else signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if target == "term" else 130), (proc.returncode, err[-2000:])
    assert time.monotonic() - t0 < 20, "waited for the runs in flight"
    assert "Traceback" not in err, err[-3000:]
    assert "leaked semaphore" not in err, err[-3000:]  # the resource tracker outlives us: nothing left for it
    if target != "term":
        assert err.strip().splitlines()[-1] == "interrupted"
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "a worker outlived the command"
    assert not list((tmp_path / "o").rglob("*.tmp"))


def test_sigkill_of_the_command_leaves_no_process_behind(tmp_path: Path, shared_data: Path) -> None:
    proc, _, _ = _start(tmp_path, shared_data, start_new_session=True)
    _wait_for_workers(proc)
    started = descendants(proc.pid)  # the workers and multiprocessing's resource tracker
    assert len(started) >= 3, started
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if alive(p)], "processes outlived a SIGKILLed command"
    finally:
        for p in started:  # never leave them running, even when the test fails
            with contextlib.suppress(OSError):
                if alive(p) and b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes():
                    os.kill(p, signal.SIGKILL)
