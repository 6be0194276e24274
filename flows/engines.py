"""The grid engines: how a list of cell jobs runs — plain Ray tasks, or a Prefect flow whose tasks are mapped onto Ray
(``prefect_ray.RayTaskRunner``); the serial engine is ``oskt.pipeline.grid.serial``.

An engine is ``engine(fn, cells) -> [fn(c) for c in cells]``; ``oskt.pipeline.grid.run_grid`` takes one as an
argument, so the library never knows which one runs it. Each cell is one Ray task with the configured CPUs / GPUs
(``compute.cpus_per_task`` / ``gpus_per_task``) and Ray retries when its worker dies (``compute.max_retries``).

Security: a local Ray binds every service to 127.0.0.1 (Ray's single-machine mode, ``LOCAL_RAY_ENV``; tested by
tests/flows/test_ray_local.py) and sends no usage statistics; a cluster is the user's explicit choice
(``--ray-address`` / ``RAY_ADDRESS`` / ``compute.ray_address``, see infra/README.md for Ray's token
authentication). Workers get only non-secret settings through the task's runtime
environment (``WORKER_ENV``: the Python path, S3 / MLflow endpoints, the Prefect API URL); credentials reach them
through the environment of the cluster or s3fs's own configuration, never through task metadata.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from oskt.config import ComputeConfig
from oskt.jobs import CellJob
from oskt.pipeline.records import CellResult

SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", SINGLE_MACHINE_VAR: "0"}
"""The environment of a local Ray (this process and every Ray process it starts).

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is what makes it loopback-only. On Linux Ray 2.60 runs in cluster mode
(``ray/_private/ray_constants.py``: ``ENABLE_RAY_CLUSTER``), where ``ray.init`` turns ``_node_ip_address="127.0.0.1"``
into the machine's routable address (``worker.py`` calls ``services.resolve_ip_for_localhost``, which asks
``get_node_ip_address``), and every server then listens on that address or on all interfaces: the GCS, raylet and
core-worker gRPC servers bind localhost only when the node address is localhost, otherwise ``::``; so do the
dashboard agent's gRPC and metrics servers (``dashboard/agent.py``: ``get_localhost_ip() if is_localhost(self.ip)
else get_all_interfaces_ip()``; ``dashboard/modules/reporter/reporter_agent.py``); the runtime-env agent and the
agent's HTTP server bind the node address. In single-machine mode (Ray's default on macOS / Windows) the node address
is 127.0.0.1, so all of them bind loopback. Ray PR #59852 (bind the node IP, not all interfaces) is not in 2.60.

Usage statistics are off; token authentication is off (2.60 would otherwise write ``~/.ray/auth_token``): only
processes on this machine can reach a loopback-only instance. Those two are defaults (a variable the user set wins);
the single-machine switch is pinned (``LOCAL_RAY_PINNED``): the way to a multi-machine Ray is a cluster address.
"""
LOCAL_RAY_PINNED = frozenset({SINGLE_MACHINE_VAR})
# What use_local_ray_env replaced in os.environ (None: was unset), for drop_local_ray_env.
_replaced_env: dict[str, str | None] = {}

# Services the pipeline may start on this machine (temporary Prefect server, local Ray, DVC) send no telemetry:
# defaults only, a variable the user set wins.
NO_TELEMETRY_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
}
PREFECT_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
"""Prefect's temporary server (no ``PREFECT_API_URL``) gets 120 s to answer instead of 20: on a busy 2-core host
(training beside it, the test suite's two workers) it took longer, and the grid stage failed with "Timed out while
attempting to connect to ephemeral Prefect API server" although nothing was wrong."""
WORKER_ENV = (
    "PYTHONPATH",
    "HF_HUB_OFFLINE",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)
"""Variables a cell task gets in its runtime environment when set here: none is a secret."""
LOCAL_HOST = "127.0.0.1"


def no_telemetry() -> None:
    """Set ``NO_TELEMETRY_ENV`` and ``PREFECT_ENV`` as defaults of this process (and so of what it starts); a
    value the user set wins."""
    for k, v in {**NO_TELEMETRY_ENV, **PREFECT_ENV}.items():
        os.environ.setdefault(k, v)


def ray_address(compute: ComputeConfig, explicit: str | None = None) -> str | None:
    """The Ray cluster to use: ``explicit`` (``--ray-address``) > ``$RAY_ADDRESS`` > ``compute.ray_address`` >
    None (start a local Ray)."""
    return explicit or os.environ.get("RAY_ADDRESS") or compute.ray_address or None


def local_cpus() -> int:
    """The CPUs this process may use (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def use_local_ray_env() -> None:
    """Set ``LOCAL_RAY_ENV`` in this process (and so in the Ray processes it starts), remembering what it replaced.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is imported; the engines import ``ray`` (or
    ``prefect_ray``) before they get here, so an imported Ray is switched too (``_sync_ray_cluster_mode``).
    """
    for k, v in LOCAL_RAY_ENV.items():
        old = os.environ.get(k)
        if old == v or (old is not None and k not in LOCAL_RAY_PINNED):
            continue
        _replaced_env.setdefault(k, old)
        os.environ[k] = v
    _sync_ray_cluster_mode()


def drop_local_ray_env() -> None:
    """Undo ``use_local_ray_env`` before connecting to a cluster, whose own settings (multi-machine mode, token
    authentication) must apply; a value changed since is left alone."""
    for k, old in _replaced_env.items():
        if os.environ.get(k) != LOCAL_RAY_ENV[k]:
            continue
        if old is None:
            del os.environ[k]
        else:
            os.environ[k] = old
    _replaced_env.clear()
    _sync_ray_cluster_mode()


def _sync_ray_cluster_mode() -> None:
    """Give an already imported Ray the cluster mode ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` now says: Ray parses it
    at import only (``ray_constants.ENABLE_RAY_CLUSTER``, read by ``services.get_node_ip_address`` on every call)."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None:
        return  # not imported yet: Ray reads the variable itself
    value = os.environ.get(SINGLE_MACHINE_VAR)
    # Ray's own parsing (ray._common.utils.env_bool): "1" / "true" is on; unset is on except on macOS / Windows.
    constants.ENABLE_RAY_CLUSTER = (
        value.lower() in ("1", "true") if value is not None else not constants.IS_WINDOWS_OR_OSX
    )


def ray_init_kwargs(compute: ComputeConfig, address: str | None = None) -> dict[str, Any]:
    """Arguments for ``ray.init``: a local Ray gets ``compute.ray_num_cpus`` (0 = the usable CPUs), no dashboard and
    loopback-only services; a cluster gets nothing (it is configured where it runs).

    Also sets the environment of a local Ray (``use_local_ray_env``), or drops it again for a cluster
    (``drop_local_ray_env``); call it right before ``ray.init``.
    """
    if address:
        drop_local_ray_env()
        return {}
    use_local_ray_env()
    return {
        "num_cpus": compute.ray_num_cpus or local_cpus(),
        "include_dashboard": False,
        "_node_ip_address": LOCAL_HOST,
    }


def worker_env() -> dict[str, str]:
    """The non-secret variables of ``WORKER_ENV`` that are set here."""
    return {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}


def cell_options(compute: ComputeConfig) -> dict[str, Any]:
    """Ray resources and retries of one cell task (Ray retries it when its worker process dies)."""
    return {"num_cpus": compute.cpus_per_task, "num_gpus": compute.gpus_per_task, "max_retries": compute.max_retries}


def cell_threads(compute: ComputeConfig) -> int:
    """torch threads inside a cell task: the CPUs it reserved."""
    return max(1, int(compute.cpus_per_task))


CellFn = Callable[[CellJob], CellResult]


def _apply(fn: CellFn, cell: CellJob) -> CellResult:
    return fn(cell)


Done = Callable[[CellResult], None] | None


def ray_engine(compute: ComputeConfig, address: str | None = None) -> Callable[..., list]:
    """Plain Ray tasks, one per cell (a local Ray is started and stopped here unless one is running); ``on_done`` is
    called in this process as each cell finishes."""

    def engine(fn: CellFn, cells: Sequence[CellJob], on_done: Done = None) -> list[CellResult]:
        import ray

        addr = ray_address(compute, address)
        owns = not ray.is_initialized()
        if owns:  # "local": a Ray of our own, never one that happens to run on this host (ray.init would join it)
            ray.init(addr or "local", **ray_init_kwargs(compute, addr))
        try:
            env = worker_env()
            remote = ray.remote(**cell_options(compute), **({"runtime_env": {"env_vars": env}} if env else {}))
            task = remote(_apply)
            refs = [task.remote(fn, c) for c in cells]
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                if on_done is not None:
                    on_done(ray.get(ready[0]))
            return list(ray.get(refs))
        finally:
            if owns:
                ray.shutdown()

    return engine


def prefect_api_url() -> str:
    """The Prefect API this process talks to; without ``PREFECT_API_URL``, the temporary local server (started
    here if needed), so that Ray workers report their task runs to the same server instead of starting their own."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the same singleton Prefect's client uses for its temporary server
    server.start()
    return server.api_url


def prefect_engine(compute: ComputeConfig, address: str | None = None) -> Callable[..., list]:
    """A Prefect flow ``oskt-student-grid`` mapping one task per cell onto ``prefect_ray``'s RayTaskRunner;
    ``on_done`` is called in this process as each cell finishes."""

    def engine(fn: CellFn, cells: Sequence[CellJob], on_done: Done = None) -> list[CellResult]:
        from prefect import flow, unmapped
        from prefect.futures import as_completed
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options

        from flows.tasks import cell_task

        addr = ray_address(compute, address)
        runner = RayTaskRunner(address=addr or "local", init_kwargs=ray_init_kwargs(compute, addr))
        env = {**worker_env(), "PREFECT_API_URL": prefect_api_url()}

        @flow(name="oskt-student-grid", log_prints=False, validate_parameters=False, task_runner=runner)
        def student_grid() -> list[CellResult]:
            with remote_options(**cell_options(compute), runtime_env={"env_vars": env}):
                futures = cell_task.map(list(cells), fn=unmapped(fn))
            if on_done is not None:
                for f in as_completed(list(futures)):
                    on_done(f.result())
            return [f.result() for f in futures]

        return student_grid()

    return engine


def engine_for(compute: ComputeConfig, address: str | None = None) -> Callable[..., list]:
    """The engine ``compute.engine`` names."""
    from oskt.pipeline.grid import serial

    if compute.engine == "serial":
        return serial
    if compute.engine == "ray":
        return ray_engine(compute, address)
    return prefect_engine(compute, address)
