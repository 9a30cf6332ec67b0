"""``--executor ray --address HOST:PORT`` against a real two-node Ray cluster started with ``ray start``.

The cluster runs on this one machine, every server bound to 127.0.0.1: a head (``ray start
--head``, 1 CPU) and a second node (``ray start --address``, 1 CPU), each with its own raylet,
object store and workers, as on two hosts sharing a filesystem. The driver is the ``permerge``
CLI in a fresh process, as a user runs it: without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (a
plain driver rewrites 127.0.0.1 to the routable address and never finds the cluster) and
without ``RAY_AUTH_MODE``.

Ray refuses to add a second node while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch that
keeps a node on loopback), and with it on, rewrites ``--node-ip-address=127.0.0.1`` to the
routable address and listens on every interface. The second node is therefore started by a
small wrapper around ``ray start`` (:data:`NODE_ON_LOOPBACK`) that keeps its address as given
and passes the loopback switch to the node's own processes.

``HOME`` is a temporary folder, so nothing Ray writes touches the real one, and both ``ray
start --block`` process groups are killed at the end: no stray Ray survives. The last test
kills the second node's raylet while it runs a task: the grid must still end with every run
done (Ray retries the task on the head; a run that fails anyway is redone by a rerun) and with
the same results as the local executor.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _procs import alive, descendants

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


# ``ray start`` for a worker node that stays on 127.0.0.1 (see the module docstring).
NODE_ON_LOOPBACK = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # read once on import: worker nodes allowed
from ray._private import services
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by the node's servers and workers
services.resolve_ip_for_localhost = lambda host: host  # keep --node-ip-address=127.0.0.1 as given
from ray.scripts.scripts import main
sys.argv = ["ray", "start", *sys.argv[1:]]
main()
"""


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    node2: subprocess.Popen[bytes]


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # up when the port accepts connections
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{what} did not come up in 60 s")


def _raylet(node: subprocess.Popen[bytes]) -> int | None:
    for pid in descendants(node.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                return pid
    return None


def _busy_workers(raylet: int) -> list[int]:
    """Workers of this raylet that are running a task (Ray retitles them ``ray::<task name>``)."""
    out = []
    for pid in descendants(raylet):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            if title.startswith(b"ray::") and not title.startswith((b"ray::IDLE", b"ray::RuntimeEnv")):
                out.append(pid)
    return out


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed next to this Python")
    home = Path(tempfile.mkdtemp(prefix="pmh"))  # short: Ray's unix socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PERMERGE_"))}
    env["HOME"] = str(home)
    port, agent_ports = _free_port(), (_free_port(), _free_port())
    head_env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the head stays on loopback
    common = ["--num-cpus=1", "--disable-usage-stats", "--object-store-memory=100000000", "--block"]
    logs = [(home / "head.log").open("wb"), (home / "node2.log").open("wb")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [
                str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                "--include-dashboard=false", f"--temp-dir={home / 'ray'}",
                f"--dashboard-agent-listen-port={agent_ports[0]}", *common,
            ],
            env=head_env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        _wait_for_port(procs[0], port, home / "head.log", "the Ray head")
        procs.append(subprocess.Popen(
            [
                sys.executable, "-c", NODE_ON_LOOPBACK, f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={agent_ports[1]}", *common,
            ],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
        deadline = time.monotonic() + 60
        while _raylet(procs[1]) is None or not _listening_on_loopback_only(procs[1]):
            if procs[1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the second Ray node did not come up: {(home / 'node2.log').read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2)  # registered with the head
        yield Cluster(f"127.0.0.1:{port}", env, procs[1])
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()
        shutil.rmtree(home, ignore_errors=True)


def _listening_on_loopback_only(node: subprocess.Popen[bytes]) -> bool:
    """The node's raylet listens, and only on 127.0.0.1 (read from /proc/net/tcp*)."""
    raylet = _raylet(node)
    if raylet is None:
        return False
    inodes = set()
    for fd in Path(f"/proc/{raylet}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    local = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                local.append(f[1].split(":")[0])
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    return bool(local) and all(a in loopback for a in local)


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


@pytest.fixture(scope="module")
def local_accuracies(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The quick grid in a local pool of one worker per core: one torch thread per run, as
    each Ray task has."""
    out = tmp_path_factory.mktemp("local")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PERMERGE_"))}
    local = _reproduce(env, out, shared_data, "--workers", str(os.cpu_count() or 1))
    assert local["failed"] == 0
    return _accuracies(out)


def test_reproduce_on_a_ray_cluster_matches_local(
    ray_cluster: Cluster, local_accuracies: dict[str, str], shared_data: Path, tmp_path: Path
) -> None:
    address, env = ray_cluster.address, ray_cluster.env
    on_ray = _reproduce(env, tmp_path / "ray", shared_data, "--executor", "ray", "--address", address)
    assert on_ray["failed"] == 0 and on_ray["finished"] and on_ray["cached"] == 0
    assert _accuracies(tmp_path / "ray") == local_accuracies
    again = _reproduce(env, tmp_path / "ray", shared_data, "--executor", "ray", "--address", address)
    assert again["cached"] == on_ray["finished"]  # the cluster run resumes like a local one


def test_a_node_lost_mid_grid_still_finishes_the_grid(
    ray_cluster: Cluster, local_accuracies: dict[str, str], shared_data: Path, tmp_path: Path
) -> None:
    """SIGKILL of the second node's raylet while one of its workers runs a task (runs last:
    the node stays dead)."""
    raylet = _raylet(ray_cluster.node2)
    assert raylet is not None, "the second node is not running"
    cmd = [sys.executable, "-m", "permerge", "reproduce", "split-mnist", "--quick", "--out", str(tmp_path / "o")]
    cmd += ["--data-root", str(shared_data), "--json", "-q", "--executor", "ray", "--address", ray_cluster.address]
    driver = subprocess.Popen(cmd, env=ray_cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _busy_workers(raylet):
            assert driver.poll() is None, driver.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no task ever ran on the second node"
            time.sleep(0.05)
        os.kill(raylet, signal.SIGKILL)
        out, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert "Traceback" not in err, err[-3000:]
    first = json.loads(out)  # nothing else on stdout: Ray's "node marked dead" goes to stderr
    deadline = time.monotonic() + 30
    while alive(raylet) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(raylet)
    if first["failed"]:  # a run lost with the node and not retried in time: a rerun redoes it
        assert driver.returncode == 1
        rerun = _reproduce(ray_cluster.env, tmp_path / "o", shared_data, "--executor", "ray", "--address",
                           ray_cluster.address)  # fmt: skip
        assert rerun["failed"] == 0
    else:
        assert driver.returncode == 0, err[-3000:]
    assert _accuracies(tmp_path / "o") == local_accuracies


def test_unreachable_cluster_is_one_clear_error(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    cmd = [sys.executable, "-m", "permerge", "reproduce", "split-mnist", "--quick", "--out", str(tmp_path / "o")]
    cmd += ["--executor", "ray", "--address", f"127.0.0.1:{_free_port()}", "-q", "--data-root", str(shared_data)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "cannot connect to the Ray cluster at '127.0.0.1:" in p.stderr
    assert "Traceback" not in p.stderr
