"""Ctrl-C during a single command: exit 130 with one line, no traceback, no partial output,
and nothing already written is lost.

Each command runs as a real ``permerge`` process, long enough that SIGINT lands inside its
main loop (training, the STE loop, condensation). Interrupted writes could only leave
temporary files (``.<name>.*.tmp``, removed on the way out) or nothing: finished files appear
by rename, so a reader never sees a half-written model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _procs import cpu_seconds, default_sigint

pytestmark = pytest.mark.slow

# Imports and data loading take 2-4 CPU seconds, and spec derivation's first fx trace imports
# torch._dynamo (several more); every command below then runs for a minute or more. Waiting on
# the child's CPU time, not on the wall clock, keeps the interrupt inside the main loop on a
# loaded machine too (a SIGINT during an import is a different test).
STARTUP_CPU_S = 15.0


def _interrupt(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "permerge", *args, "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 180
    while proc.poll() is None and cpu_seconds(proc.pid) < STARTUP_CPU_S and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"finished before the interrupt: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def env(shared_data: Path) -> dict[str, str]:
    return {**os.environ, "PERMERGE_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}


def _assert_interrupted(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "interrupted"


def test_ctrl_c_during_training_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "model"
    r = _interrupt(["train", "-d", "mnist@300", "--epochs", "5000", "--batch-size", "50", "-o", str(out)], env)
    _assert_interrupted(r)
    assert not out.exists() or _files(out) == {}


def test_ctrl_c_during_ste_keeps_the_previous_merge(env: dict[str, str], tmp_path: Path) -> None:
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    for d, ds, seed in ((a, "mnist@50", "0"), (b, "fashion-mnist@50", "1")):
        subprocess.run(
            [sys.executable, "-m", "permerge", "train", "-d", ds, "-m", "mlp:64", "--epochs", "2", "--seed", seed]
            + ["-o", str(d), "-q"],
            env=env,
            check=True,
            timeout=120,
        )
    subprocess.run(
        [sys.executable, "-m", "permerge", "merge", str(a), str(b), "--method", "wm", "-o", str(out), "-q"],
        env=env,
        check=True,
        timeout=120,
    )
    before = _files(out)
    assert any(k.endswith(".safetensors") for k in before)
    r = _interrupt(
        ["merge", str(a), str(b), "--method", "ste", "--data", "mnist@50", "fashion-mnist@50"]
        + ["--opt", "steps=200000", "-o", str(out)],
        env,
    )
    _assert_interrupted(r)
    assert _files(out) == before  # the earlier merge is intact and no temporary file is left


def test_ctrl_c_during_condensation_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sets" / "mnist-dm.safetensors"
    r = _interrupt(
        ["reduce", "--dataset", "mnist@100", "--method", "dm", "--ipc", "10", "--opt", "iterations=100000"]
        + ["--out", str(out)],
        env,
    )
    _assert_interrupted(r)
    assert not out.parent.exists() or _files(out.parent) == {}
