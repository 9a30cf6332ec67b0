"""``--executor ray --address HOST:PORT`` against a real Ray cluster started with ``ray start``.

The cluster is a one-node head on 127.0.0.1 (2 CPUs), started the way a user starts a
cluster's head, with Ray's defaults otherwise, so token authentication is on. The driver is
the ``permerge`` CLI in a fresh process, as a user runs it: without
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (a plain driver rewrites 127.0.0.1 to the routable
address and never finds the cluster) and without ``RAY_AUTH_MODE`` (a plain driver sends no
token and is refused). Both used to fail; the executor now handles them.

``HOME`` is a temporary folder, so the token Ray generates never touches the real one, and
the whole ``ray start --block`` process group is killed at the end: no stray Ray survives.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the ``ray start --block`` process group (a clean shutdown), then SIGKILL it."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # the group's daemons may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed next to this Python")
    home = Path(tempfile.mkdtemp(prefix="pmh"))  # short: Ray's unix socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PERMERGE_"))}
    env["HOME"] = str(home)
    port = _free_port()
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the head stays on loopback
    log = (home / "ray-start.log").open("wb")
    proc = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={home / 'ray'}",
        ],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # up when the GCS port accepts connections
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(home / 'ray-start.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Ray head did not come up in 60 s")
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(proc)
        log.close()


def _reproduce(env: dict[str, str], out: Path, shared_data: Path, *extra: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "permerge", "reproduce", "split-mnist", "--quick", "--out", str(out)]
    cmd += ["--data-root", str(shared_data), "--json", "-q", *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(json.loads(p.stdout))


def _accuracies(out: Path) -> dict[str, str]:
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {r["key"]: r["acc_mean"] for r in rows}


def test_reproduce_on_a_ray_cluster_matches_local(
    ray_cluster: tuple[str, dict[str, str]], shared_data: Path, tmp_path: Path
) -> None:
    address, env = ray_cluster
    on_ray = _reproduce(env, tmp_path / "ray", shared_data, "--executor", "ray", "--address", address)
    assert on_ray["failed"] == 0 and on_ray["finished"] and on_ray["cached"] == 0
    # same grid in a local pool of one worker per core: one torch thread per run, as each Ray task has
    local = _reproduce(env, tmp_path / "local", shared_data, "--workers", str(os.cpu_count() or 1))
    assert local["finished"] == on_ray["finished"]
    assert _accuracies(tmp_path / "ray") == _accuracies(tmp_path / "local")
    again = _reproduce(env, tmp_path / "ray", shared_data, "--executor", "ray", "--address", address)
    assert again["cached"] == on_ray["finished"]  # the cluster run resumes like a local one


def test_unreachable_cluster_is_one_clear_error(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [sys.executable, "-m", "permerge", "reproduce", "split-mnist", "--quick", "--out", str(tmp_path / "o")]
    cmd += ["--executor", "ray", "--address", f"127.0.0.1:{_free_port()}", "-q", "--data-root", str(shared_data)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "cannot connect to the Ray cluster at '127.0.0.1:" in p.stderr
    assert "Traceback" not in p.stderr
