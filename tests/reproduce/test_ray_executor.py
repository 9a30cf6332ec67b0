"""The Ray executor against a real local Ray (2 CPUs): same results as the local executor,
cached reruns, results in task order, and a Ray that listens on loopback only.

One Ray is started for the whole module (starting it costs a few seconds) and always shut
down, also when a test fails. The executor itself makes the local Ray use 127.0.0.1, so this
module deliberately does not set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` before importing Ray:
the loopback test checks the executor's own handling.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _procs import descendants
from permerge.errors import PermergeError
from permerge.reproduce.executors import LocalExecutor, get_executor
from permerge.reproduce.tasks import RunContext, Task

TRAIN = [
    Task(
        kind="train",
        params={
            "datasets": ["mnist@20"],
            "model": "mlp:32",
            "seed": s,
            "train": {"epochs": 2, "val_fraction": 0.0},
        },
        label=f"train-seed{s}",
    )
    for s in (0, 1)
]
EVALUATE = [
    Task(kind="evaluate", params={"model": t.key, "datasets": ["mnist", "fashion-mnist"]}, label=f"eval-{t.label}")
    for t in TRAIN
]


def _run_grid(executor: Any, ctx: RunContext) -> tuple[list[dict[str, Any]], list[str]]:
    """Both stages, the way the planner hands them over; returns results and on_result order."""
    seen: list[str] = []
    results: list[dict[str, Any]] = []
    for stage in (TRAIN, EVALUATE):
        results += executor.run(stage, ctx, on_result=lambda t, r: seen.append(t.key))
    return results, seen


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Any]:
    pytest.importorskip("ray")
    ex = get_executor("ray", workers=2)
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="module")
def grids(shared_data: Path, ray_executor: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not (shared_data / "FashionMNIST").is_dir():
        pytest.skip("needs ../shared/data/FashionMNIST")
    ray_ctx = RunContext(root=str(tmp_path_factory.mktemp("ray-root")), data_root=str(shared_data))
    local_ctx = RunContext(root=str(tmp_path_factory.mktemp("local-root")), data_root=str(shared_data))
    t0 = time.perf_counter()
    ray_results, ray_seen = _run_grid(ray_executor, ray_ctx)
    ray_s = time.perf_counter() - t0
    local = LocalExecutor(workers=1)
    local.threads = 1  # a Ray task gets one torch thread; same threads, same floating-point sums
    try:
        local_results, _ = _run_grid(local, local_ctx)
    finally:
        local.close()
    return {"ctx": ray_ctx, "ray": ray_results, "seen": ray_seen, "local": local_results, "ray_seconds": ray_s}


@pytest.mark.slow
def test_ray_matches_local_executor(grids: dict[str, Any]) -> None:
    ray_results, local_results = grids["ray"], grids["local"]
    assert [r["status"] for r in ray_results] == ["ok"] * 4, [r.get("error") for r in ray_results]
    assert [r["key"] for r in ray_results] == [t.key for t in TRAIN + EVALUATE]  # task order
    assert [r["cached"] for r in ray_results] == [False] * 4
    for r, loc in zip(ray_results[:2], local_results[:2], strict=True):
        assert r["scores"] == loc["scores"]
    for r, loc in zip(ray_results[2:], local_results[2:], strict=True):
        assert len(r["eval"]["per_dataset"]) == 2  # mnist and fashion-mnist test sets
        assert r["eval"] == loc["eval"]
    assert ray_results[0]["scores"] != ray_results[1]["scores"]  # the seeds really differ


@pytest.mark.slow
def test_on_result_fires_once_per_task(grids: dict[str, Any]) -> None:
    assert sorted(grids["seen"]) == sorted(t.key for t in TRAIN + EVALUATE)


@pytest.mark.slow
def test_rerun_returns_cached_results(grids: dict[str, Any], ray_executor: Any) -> None:
    again, _ = _run_grid(ray_executor, grids["ctx"])
    assert [r["cached"] for r in again] == [True] * 4
    assert [r["key"] for r in again] == [r["key"] for r in grids["ray"]]
    assert again[0]["scores"] == grids["ray"][0]["scores"]


def _listening_addresses(pids: set[int]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hexip = cols[1].split(":")[0]
            words = [struct.pack("<I", int(hexip[i : i + 8], 16)) for i in range(0, len(hexip), 8)]
            raw = b"".join(words)
            out.append(ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))
    return out


@pytest.mark.slow
def test_local_ray_uses_loopback_only(ray_executor: Any) -> None:
    import ray

    assert ray_executor.node_ip() == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    if not sys.platform.startswith("linux"):
        return
    addrs = _listening_addresses(descendants(os.getpid()))
    assert addrs, "found no listening sockets of the Ray processes"
    public = [
        a
        for a in addrs
        if not (a.is_loopback or (isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped and a.ipv4_mapped.is_loopback))
    ]
    assert not public, f"Ray listens beyond loopback: {public}"


@pytest.mark.slow
def test_timeout_raises_and_keeps_going(ray_executor: Any, tmp_path: Path) -> None:
    # a task that fails fast (unknown model); with a zero budget it cannot be waited for
    bad = Task(kind="evaluate", params={"model": "0" * 16, "datasets": ["mnist"]}, label="missing-model")
    ctx = RunContext(root=str(tmp_path))
    with pytest.raises(PermergeError, match="unfinished"):
        ray_executor.run([bad], ctx, timeout_s=0.0)
    # Ray is still usable; the error is a result. The bound is generous: the cancelled task's
    # worker was killed, and a new one imports torch first (over 60 s on 2 busy cores).
    [r] = ray_executor.run([bad], ctx, timeout_s=300.0)
    assert r["status"] == "error" and r["key"] == bad.key


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from permerge.reproduce.ray_executor import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(PermergeError, match=r"pip install 'permerge\[ray\]'"):
        RayExecutor()


def test_cuda_runs_reserve_gpus() -> None:
    """Ray hides GPUs from a task that reserved none: --device cuda must reserve them."""
    pytest.importorskip("ray")
    from permerge.reproduce.ray_executor import resources

    t = TRAIN[0]
    assert resources(t, RunContext(root="r", device="cpu")) == (1.0, 0.0)
    assert resources(t, RunContext(root="r", device="auto")) == (1.0, 0.0)
    assert resources(t, RunContext(root="r", device="cuda")) == (1.0, 1.0)
    assert resources(t, RunContext(root="r", device="cuda:0"), gpus_per_run=0.25) == (1.0, 0.25)


@pytest.mark.parametrize("bad", [0.0, -1.0, 1.5])
def test_bad_gpus_per_run(bad: float) -> None:
    pytest.importorskip("ray")
    from permerge.reproduce.ray_executor import RayExecutor

    with pytest.raises(PermergeError, match="--gpus-per-run"):
        RayExecutor(gpus_per_run=bad)
