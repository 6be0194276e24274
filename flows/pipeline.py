"""The whole OSKT pipeline as one Prefect flow (prepare → teachers → chains → student grid → report) and its
nightly deployment (cron 02:00 UTC).

The flow takes only strings (a params file, a profile, ``--set`` overrides), so a deployment can run it from
``prefect.yaml`` or ``flow.serve``. Every job is reused when its folder holds its finished result
(``oskt.jobs.reuse``), so a nightly run redoes only what a change in the params file requires.

Serve it locally::

    python -m flows.pipeline serve            # registers 'oskt-pipeline/nightly' and runs scheduled runs
    prefect deploy --all                      # or: deploy from prefect.yaml to a work pool (infra/README.md)
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.engines import cell_threads, prefect_engine
from flows.tasks import chain_task, prepare_task, report_task, teacher_task
from oskt.config import load_config
from oskt.data.refs import dataset_ref
from oskt.pipeline.graph import datasets_used, jobs_from_config, run_options
from oskt.pipeline.preflight import preflight
from oskt.pipeline.records import Paths, ReportRecord
from oskt.pipeline.run import pipeline_run
from oskt.pipeline.stages import train_students

NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TZ = "UTC"
DEPLOYMENT_NAME = "nightly"


@flow(name="oskt-pipeline", log_prints=True, validate_parameters=False)
def oskt_pipeline(
    params: str | None = "params.yaml",
    profile: str | None = None,
    overrides: list[str] | None = None,
    ray_address: str | None = None,
) -> ReportRecord:
    """Run every stage; the student grid is a subflow mapped on Ray."""
    cfg = load_config(params=params, profile=profile, overrides=tuple(overrides or ()))
    preflight(cfg)  # one clear error before any training when MLflow / S3 cannot be reached
    paths, run, graph = Paths.of(cfg.compute), run_options(cfg), jobs_from_config(cfg)
    with pipeline_run(cfg, name="prefect:oskt-pipeline") as target:
        prepare_task([dataset_ref(n, cfg.data) for n in datasets_used(cfg)], paths, target, cfg.data.bad_images, run)
        teachers = {s: teacher_task.submit(j, paths, target, run) for s, j in graph.teachers.items()}
        chains = [
            chain_task.submit(j, paths, target, run, wait_for=[teachers[s]]) for (s, _), j in graph.chains.items()
        ]
        [c.result() for c in chains]
        # the same stage function DVC runs: a 'students' MLflow run, then the grid subflow mapped on Ray
        engine = prefect_engine(cfg.compute, ray_address)
        train_students(graph.cells, paths, target, engine=engine, threads=cell_threads(cfg.compute), run=run)
        return report_task(cfg, paths, target)


def nightly_deployment(params: str = "params.yaml") -> RunnerDeployment:
    """The nightly deployment (cron 02:00 UTC), declared in code; ``prefect.yaml`` declares the same one."""
    return oskt_pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        schedule=Cron(NIGHTLY_CRON, timezone=NIGHTLY_TZ),
        parameters={"params": params},
        tags=["oskt", "nightly"],
        description="Nightly OSKT reproduction: dvc-equivalent stages, grid on Ray.",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline serve|run``: serve the nightly deployment, or run the flow once now."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from prefect import serve

        serve(nightly_deployment())
        return 0
    if argv[:1] == ["run"]:
        rec = oskt_pipeline(params=argv[1] if len(argv) > 1 else "params.yaml")
        print(f"report: {rec.markdown}")
        return 0
    print("usage: python -m flows.pipeline serve | run [params.yaml]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
