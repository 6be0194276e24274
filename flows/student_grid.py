"""The student grid as a Prefect flow whose cells are mapped onto Ray (``prefect_ray.RayTaskRunner``).

Each cell is one Ray task with the configured CPUs / GPUs (``compute.cpus_per_task`` / ``gpus_per_task``), torch
threads set to its CPUs, and Ray retries when its worker dies (``compute.max_retries``). Finished cells are skipped
inside ``oskt.pipeline.grid.run_cell``, so a rerun after a crash only does what is missing.
"""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.settings import PREFECT_API_URL
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from flows.tasks import cell_task
from oskt.config import Config
from oskt.pipeline.engines import cell_options, cell_threads, ray_address, ray_init_kwargs, worker_env
from oskt.pipeline.grid import grid_cells
from oskt.pipeline.records import CellResult, Paths, TrackingTarget
from oskt.pipeline.tracking import ensure_experiment


def prefect_api_url() -> str:
    """The Prefect API this process talks to; without ``PREFECT_API_URL``, the temporary local server (started
    here if needed), so that Ray workers report their task runs to the same server instead of starting their own."""
    url = PREFECT_API_URL.value()
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the same singleton Prefect's client uses for its temporary server
    server.start()
    return server.api_url


@flow(name="oskt-student-grid", log_prints=True, validate_parameters=False)
def student_grid(cfg: Config, paths: Paths, target: TrackingTarget | None = None) -> list[CellResult]:
    """Map every grid cell onto the flow's task runner and wait for all of them."""
    if target is not None:  # create the store and experiment here: concurrent cells racing to create a fresh
        ensure_experiment(target)  # SQLite store's tables fail ("table ... already exists") and cost a retry
    env = {**worker_env(), "PREFECT_API_URL": prefect_api_url()}
    with remote_options(**cell_options(cfg.compute), runtime_env={"env_vars": env}):
        futures = cell_task.map(
            grid_cells(cfg),
            cfg=unmapped(cfg),
            paths=unmapped(paths),
            target=unmapped(target),
            threads=unmapped(cell_threads(cfg.compute)),
        )
    return [f.result() for f in futures]


def ray_runner(cfg: Config, address: str | None = None, num_cpus: int | None = None) -> RayTaskRunner:
    """A RayTaskRunner on the cluster in force (``--ray-address`` > ``$RAY_ADDRESS`` > ``compute.ray_address``) or
    a local Ray with ``num_cpus`` CPUs and no dashboard."""
    address = ray_address(cfg.compute, address)
    return RayTaskRunner(address=address, init_kwargs=ray_init_kwargs(num_cpus, address))


def run_student_grid(
    cfg: Config,
    paths: Paths,
    target: TrackingTarget | None = None,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> list[CellResult]:
    """Run :func:`student_grid` on Ray; what ``oskt.pipeline.stages.train_students`` calls for ``engine='prefect'``."""
    runner = ray_runner(cfg, ray_address, num_cpus)
    return student_grid.with_options(task_runner=runner)(cfg, paths, target)
