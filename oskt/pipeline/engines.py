"""How a list of grid cells runs: serially in this process, or as plain Ray tasks.

The production path is the Prefect flow in ``flows/student_grid.py`` (Prefect tasks on ``prefect_ray``'s
``RayTaskRunner``); the plain-Ray engine is the baseline the fan-out benchmark compares against and a fallback for
clusters without a Prefect server. ``ray`` is imported inside functions only.
"""

from __future__ import annotations

import os
from typing import Any

from oskt.config import ComputeConfig, Config
from oskt.pipeline.grid import run_cell
from oskt.pipeline.records import CellResult, GridCell, Paths, TrackingTarget

LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
# Services the pipeline may start on this machine (temporary Prefect server, local Ray, DVC) send no telemetry:
# defaults only, a variable the user set wins.
NO_TELEMETRY_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
}


def no_telemetry() -> None:
    """Set ``NO_TELEMETRY_ENV`` as defaults of this process (and so of what it starts)."""
    for k, v in NO_TELEMETRY_ENV.items():
        os.environ.setdefault(k, v)


# a worker that inherits these from the driver finds the project and the test backend
_FORWARD_ENV = (
    "PYTHONPATH",
    "OSKT_PIPELINE_BACKEND",
    "HF_HUB_OFFLINE",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
)


def ray_address(compute: ComputeConfig, explicit: str | None = None) -> str | None:
    """The Ray cluster to use: ``explicit`` (``--ray-address``) > ``$RAY_ADDRESS`` > ``compute.ray_address`` >
    None (start a local Ray)."""
    return explicit or os.environ.get("RAY_ADDRESS") or compute.ray_address or None


def ray_init_kwargs(num_cpus: int | None = None, address: str | None = None) -> dict[str, Any]:
    """Arguments for ``ray.init``: a local Ray gets ``num_cpus`` and no dashboard; a cluster gets neither.

    Sets the environment a local Ray needs (usage stats off, no auth token file) unless already set.
    """
    kwargs: dict[str, Any] = {}
    if address:
        return kwargs
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    return kwargs


def worker_env() -> dict[str, str]:
    """Environment a cell task gets (``runtime_env``): the project's ``OSKT_*`` variables (e.g. the backend hook),
    ``PYTHONPATH``, the S3 endpoint and credentials; whatever of it is set here."""
    return {k: v for k, v in os.environ.items() if v and (k in _FORWARD_ENV or k.startswith("OSKT_"))}


def cell_options(compute: ComputeConfig) -> dict[str, Any]:
    """Ray resources and retries of one cell task (Ray retries it when its worker process dies)."""
    return {"num_cpus": compute.cpus_per_task, "num_gpus": compute.gpus_per_task, "max_retries": compute.max_retries}


def cell_threads(compute: ComputeConfig) -> int:
    """torch threads inside a cell task: the CPUs it reserved."""
    return max(1, int(compute.cpus_per_task))


def run_serial(
    cfg: Config, cells: list[GridCell], paths: Paths, target: TrackingTarget | None = None, backend: str | None = None
) -> list[CellResult]:
    """All cells one after another in this process (torch keeps its default thread count)."""
    return [run_cell(cfg, c, paths, target=target, backend=backend) for c in cells]


def run_ray(
    cfg: Config,
    cells: list[GridCell],
    paths: Paths,
    target: TrackingTarget | None = None,
    backend: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
) -> list[CellResult]:
    """All cells as plain Ray tasks with the configured CPUs / GPUs and retries on worker death."""
    import ray

    address = ray_address(cfg.compute, address)
    owns = not ray.is_initialized()
    if owns:
        ray.init(address, **ray_init_kwargs(num_cpus, address))
    try:
        env = worker_env()
        options = {**cell_options(cfg.compute), **({"runtime_env": {"env_vars": env}} if env else {})}
        remote = ray.remote(**options)(run_cell)
        threads = cell_threads(cfg.compute)
        refs = [remote.remote(cfg, c, paths, target=target, threads=threads, backend=backend) for c in cells]
        return list(ray.get(refs))
    finally:
        if owns:
            ray.shutdown()
