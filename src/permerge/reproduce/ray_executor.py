"""The Ray executor: the same tasks as the local pool, spread over a Ray cluster (or a local Ray).

Tasks are idempotent and write their artifacts and ``result.json`` under ``ctx.root``, so the
executor only ships ``(task, ctx)`` to a worker and gets back the small result dict; nothing
large travels through Ray's object store. Needs the optional extra: ``pip install 'permerge[ray]'``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..errors import PermergeError
from .executors import OnResult, failed_result, register_executor
from .tasks import RunContext, Task, execute

_INSTALL_HINT = "the ray executor needs the optional extra: pip install 'permerge[ray]'"
# Set before Ray starts, it makes Ray pick 127.0.0.1 as the node address, and Ray's servers
# (GCS, raylet, object manager, workers) then bind to it instead of every interface.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = "127.0.0.1"
# Results are small dicts and artifacts go through the filesystem: a small object store is
# plenty and keeps a local Ray from reserving a third of the machine's memory.
_OBJECT_STORE_BYTES = 256 * 1024**2


def _run_task(task: Task, ctx: RunContext) -> dict[str, Any]:
    """What a Ray worker runs (module-level so workers import it by name, not by value)."""
    return execute(task, ctx)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise PermergeError(_INSTALL_HINT) from e
    return ray


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a local Ray that starts inside this block use (and listen on) 127.0.0.1 only.

    On Linux Ray treats ``_node_ip_address="127.0.0.1"`` as "this machine" and replaces it with
    the routable address, and its servers listen on all interfaces. What keeps it on loopback is
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; Ray reads that once, when it is first imported, so
    if ``ray`` was imported before, the constant read from it is switched too. The environment
    variable is inherited by the processes Ray starts here; both are restored afterwards.
    """
    old_env = os.environ.get(_LOOPBACK_ENV)
    os.environ[_LOOPBACK_ENV] = "0"
    constants: Any = None
    old_flag: Any = None
    try:
        from ray._private import ray_constants as constants

        old_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
        constants.ENABLE_RAY_CLUSTER = False
    except ImportError:  # a Ray without that private module: the check after start decides
        constants = None
    try:
        yield
    finally:
        if constants is not None and old_flag is not None:
            constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old_env


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` (``ray://HOST:PORT`` too); None for ``auto``."""
    if address == "auto" or ":" not in address:
        return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise PermergeError(f"bad Ray address {address!r}: expected auto or HOST:PORT") from None


def _check_reachable(address: str, host: str, port: int, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes: Ray retries an unreachable GCS for several minutes."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise PermergeError(f"cannot connect to the Ray cluster at {address!r}: nothing answers there ({e})") from None


def _use_token_auth_if_available() -> None:
    """Let the driver authenticate to a cluster started with token authentication.

    ``ray start`` turns token authentication on by default, but a driver joining with
    ``ray.init(address=...)`` only sends the token when ``RAY_AUTH_MODE=token``; otherwise every
    call is refused and the connection times out after ~20 s with a generic error. When the user
    has not chosen a mode and a token is at hand, switch it on: a cluster without
    authentication accepts such a driver too. The variable is inherited by Ray's helpers.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file)):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its config when imported: refresh it so this process sees the mode too
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
    except (ImportError, AttributeError):  # an older Ray without token authentication
        pass


def _cluster_messages_to_stderr() -> None:
    """Ray prints the cluster's error events (a node marked dead, a worker killed) on the
    driver's *stdout*, which would corrupt ``--json`` output: send them to stderr. Private Ray
    API, so only where it looks as expected."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_permerge_stderr", False):
        return

    def to_stderr(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return original({**data, "is_err": True}, *args, **kwargs)

    to_stderr._permerge_stderr = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_stderr


def _abs_ctx(ctx: RunContext, threads: int) -> RunContext:
    """Workers do not share the driver's working directory: send absolute paths.

    ``abspath``, not ``resolve``: a shared mount may be reached through a symlink that the
    workers have too, while the resolved target can differ between hosts.
    """
    return replace(
        ctx,
        root=os.path.abspath(ctx.root),
        data_root=os.path.abspath(ctx.data_root) if ctx.data_root else None,
        threads=threads,
    )


RUN_CPUS = 1.0  # every run reserves one CPU (its torch threads: RunContext.threads)


def resources(task: Task, ctx: RunContext, gpus_per_run: float = 1.0) -> tuple[float, float]:
    """(CPUs, GPUs) a Ray task reserves. With ``--device cuda`` every run reserves
    ``gpus_per_run`` GPUs (a fraction packs several small runs on one GPU): Ray hides the GPUs
    from a task that reserved none, so without this a cluster run would fail or fall back.
    ``auto`` reserves none: it means "a GPU if this worker happens to see one"."""
    return RUN_CPUS, gpus_per_run if ctx.device.startswith("cuda") else 0.0


@register_executor("ray")
class RayExecutor:
    """Run each task as a Ray task that reserves one CPU (and ``gpus_per_run`` GPUs with ``--device cuda``).

    Without ``address`` a private local Ray is started with ``workers`` CPUs (default: all
    cores), listening on 127.0.0.1 only, without the dashboard; :meth:`close` shuts it down.
    With ``address`` (``"auto"`` or ``"HOST:PORT"``) it joins an existing cluster, whose size
    decides the parallelism, and leaves it running on close. A Ray already initialised in this
    process is used as is and also left running.

    Workers and driver exchange only ``(task, ctx)`` and the result dict: the artifacts are
    files under ``ctx.root`` that later tasks read by path. On a real cluster, therefore, put
    ``--out`` (``ctx.root``) and the data root on a filesystem mounted at the same path on every
    node, and install permerge and the same torch version on every worker (a different torch
    can change the numbers, and a task's cached result would then depend on where it ran).

    Each task gets one torch thread per CPU it reserved (one by default): Ray already runs one
    task per reserved core, and more threads would oversubscribe the node.
    ``timeout_s`` bounds one :meth:`run` (one stage); past it the unfinished tasks are cancelled
    and a :class:`PermergeError` is raised. Finished tasks keep their results, so a rerun resumes.
    """

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        address: str | None = None,
        timeout_s: float | None = None,
        gpus_per_run: float = 1.0,
    ) -> None:
        if workers is not None and workers < 1:
            raise PermergeError(f"--workers must be at least 1, got {workers}")
        if not 0 < gpus_per_run <= 1 and not (gpus_per_run > 1 and gpus_per_run.is_integer()):
            raise PermergeError(f"--gpus-per-run must be a fraction in (0, 1] or a whole number, got {gpus_per_run}")
        self.workers = workers
        self.gpus_per_run = gpus_per_run
        self.address = address
        self.timeout_s = timeout_s
        self._started = False
        ray = _import_ray()
        self._ray = ray
        _cluster_messages_to_stderr()
        if ray.is_initialized():
            return  # the caller's Ray: use it, leave it running
        if address:
            host_port = _host_port(address)
            if host_port is not None:
                _check_reachable(address, *host_port)
            _use_token_auth_if_available()
            on_loopback = host_port is not None and host_port[0] in {"127.0.0.1", "localhost"}
            try:
                with _loopback_only() if on_loopback else contextlib.nullcontext():
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise PermergeError(
                    f"cannot connect to the Ray cluster at {address!r}: {e} (is it running? with token "
                    "authentication, put its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                ) from e
            return
        with _loopback_only():
            ray.init(
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=_OBJECT_STORE_BYTES,
                _node_ip_address=_LOOPBACK,
            )
        self._started = True
        ip = self.node_ip()
        if ip != _LOOPBACK:
            self.close()
            raise PermergeError(f"local Ray came up on {ip}, not {_LOOPBACK}; refusing to run it on a public address")

    def node_ip(self) -> str:
        """The address this process's Ray node uses (127.0.0.1 for the local Ray)."""
        return str(self._ray.util.get_node_ip_address())

    def run(
        self,
        tasks: Sequence[Task],
        ctx: RunContext,
        on_result: OnResult | None = None,
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``tasks`` (independent of each other) and return their results in task order,
        calling ``on_result(task, result)`` as each one finishes."""
        ray = self._ray
        if not tasks:
            return []
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = None if limit is None else time.monotonic() + limit
        remote = ray.remote(_run_task)
        refs: dict[Any, int] = {}
        for i, t in enumerate(tasks):
            # Task errors come back as results, never as exceptions, so a retry only happens
            # when the worker or node died; tasks are idempotent, so it is safe.
            cpus, gpus = resources(t, ctx, self.gpus_per_run)
            opts = remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=1, name=t.label or t.kind)
            refs[opts.remote(t, _abs_ctx(ctx, threads=max(1, int(cpus))))] = i
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        pending = list(refs)
        try:
            while pending:
                wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
                if not done:
                    raise PermergeError(
                        f"ray: {len(pending)} of {len(tasks)} runs unfinished after {limit:g} s; "
                        "finished runs are kept, rerun to resume"
                    )
                for ref in done:
                    i = refs[ref]
                    try:
                        results[i] = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a dead worker fails its task, not the grid
                        results[i] = failed_result(tasks[i], f"ray: {type(e).__name__}: {e}")
                    if on_result:
                        on_result(tasks[i], results[i])  # type: ignore[arg-type]
        finally:
            for ref in pending:  # timeout or an exception in on_result: stop what is left
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        return [r for r in results if r is not None]

    def close(self, abort: bool = False) -> None:
        """Shut Ray down if this executor started it; a cluster or the caller's Ray stays up.
        (``abort`` changes nothing here: :meth:`run` already cancels its unfinished tasks.)"""
        if self._started:
            self._started = False
            self._ray.shutdown()
