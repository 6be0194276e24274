"""The real stack: Prefect flows (test harness server), tasks mapped on prefect-ray's RayTaskRunner (local Ray, 2
CPUs), MLflow (SQLite store, artifacts on S3), data and outputs on a moto S3 server, real (smoke-sized) training;
the killed-worker test passes a training double as an argument."""

from __future__ import annotations

import asyncio
import os

import pytest
import yaml

from oskt import io
from oskt.config import dump_config, load_config
from oskt.pipeline.graph import jobs_from_config
from oskt.pipeline.tracking import search_runs, target_from_config

pytestmark = pytest.mark.pipeline
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params(stack, name: str, *extra: str, s3: bool = False) -> str:  # noqa: ANN001
    base = f"s3://{stack.bucket}/{name}" if s3 else os.path.join(stack.root, name)
    overrides = [
        f"compute.out_dir={base}/out",
        f"data.root={base}/data",
        f"tracking.uri=sqlite:///{stack.root}/{name}.db",
        f"tracking.experiment={name}",
        "compute.max_retries=2",
        "compute.device=cpu",
        *extra,
    ]
    if s3:
        overrides.append(f"tracking.artifact_location=s3://{stack.bucket}/{name}/mlartifacts")
    cfg = load_config(profile="smoke", overrides=overrides)
    path = os.path.join(stack.root, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(dump_config(cfg))
    return path


def test_whole_pipeline_flow_with_data_and_artifacts_on_s3(stack, monkeypatch) -> None:  # noqa: ANN001
    from flows.pipeline import oskt_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(stack, "s3run", "students.names=[S1]", s3=True)
    rec = oskt_pipeline(params=params)
    cfg = load_config(params=params)
    assert rec.markdown.startswith(f"s3://{stack.bucket}/s3run/out/report/")
    md = io.read_bytes(rec.markdown).decode()
    for name in ("OSKT", "Scratch", "WTSel", "KD++", "DepGraph"):
        assert f"| {name} |" in md
    n = len(jobs_from_config(cfg).cells)
    assert rec.num_runs == n
    cells = io.listdir(f"s3://{stack.bucket}/s3run/out/students")
    assert len([c for c in cells if "__" in c]) == n
    target = target_from_config(cfg, parent_run_id="")
    runs = search_runs(target, "tags.`oskt.kind` = 'cell'")
    assert len(runs) == n
    assert runs[0].info.artifact_uri.startswith(f"s3://{stack.bucket}/s3run/mlartifacts/")
    import boto3

    keys = [
        o["Key"]
        for o in boto3.client("s3")
        .list_objects_v2(Bucket=stack.bucket, Prefix="s3run/mlartifacts/")
        .get("Contents", [])
    ]
    assert any(k.endswith("checkpoint/student.pt") for k in keys)
    assert any(k.endswith("report/report.md") for k in keys)
    # the flow's parent run holds the stage runs
    parent = search_runs(target, "tags.`oskt.kind` = 'pipeline'")[0]
    stages = search_runs(target, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags.get("oskt.stage") for r in stages} >= {"prepare", "teacher", "chain", "students"}


def test_grid_survives_a_killed_ray_worker(stack, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from flows.engines import cell_threads, prefect_engine
    from oskt.data.refs import dataset_ref
    from oskt.pipeline import Paths, datasets_used, prepare_data, refine_chain, report, train_teacher
    from oskt.pipeline.run import pipeline_run
    from oskt.pipeline.stages import train_students
    from tests.fakes import cell_trainer, fake_chain, fake_count, fake_teacher

    victim = "synth_a--synth_b__S1__oskt"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(params=_params(stack, "kill", "students.names=[S1]", "students.scenarios=[synth_a->synth_b]"))
    paths, graph = Paths(cfg.compute.out_dir), jobs_from_config(cfg)
    with pipeline_run(cfg) as target:
        prepare_data([dataset_ref(n, cfg.data) for n in datasets_used(cfg)], paths, target)
        train_teacher(graph.teachers["synth_a"], paths, target, train=fake_teacher)
        for job in graph.chains.values():
            refine_chain(job, paths, target, train=fake_chain)
        results = train_students(
            graph.cells,
            paths,
            target,
            engine=prefect_engine(cfg.compute),
            threads=cell_threads(cfg.compute),
            train=cell_trainer(str(tmp_path), kill=victim),  # the double, as an argument: pickled to the workers
            count=fake_count,
        )
        assert len(results) == len(graph.cells) and not any(r.skipped for r in results)
        assert report(cfg, paths, target).num_runs == len(graph.cells)
        killed = search_runs(target, "tags.`oskt.kind` = 'cell' and attributes.status = 'KILLED'")
    assert os.path.exists(tmp_path / f"killed-{victim}__seed0__fs1")
    with open(tmp_path / "attempts.txt") as f:
        attempts = [line.split() for line in f]
    tries = [a for a in attempts if a[0].startswith(victim)]
    assert len(tries) == 2 and tries[0][1] != tries[1][1]  # retried in a new worker process
    assert {a[2] for a in attempts} == {"threads=1"}  # torch threads = the task's CPUs
    assert [r.data.tags["oskt.cell"] for r in killed] == [f"{victim}__seed0__fs1"]


def test_task_runtime_environments_hold_no_secret(stack, monkeypatch) -> None:  # noqa: ANN001
    """The S3 credentials are in this process's environment (the stack fixture), never in a task's runtime
    environment (job and task metadata show it); workers get them from the cluster's environment."""
    from flows.engines import WORKER_ENV, worker_env

    monkeypatch.setenv("AWS_SESSION_TOKEN", "secret-token")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-password")
    env = worker_env()
    assert env.get("AWS_ENDPOINT_URL") == os.environ["AWS_ENDPOINT_URL"]  # endpoints do travel
    secrets = {"testing", "secret-token", "secret-password"}
    assert not secrets & set(env.values()) and not any("SECRET" in k or "TOKEN" in k for k in WORKER_ENV)


def test_ablation_reuses_the_teacher_and_adds_a_report_row(stack, monkeypatch) -> None:  # noqa: ANN001
    from flows.cli import main as flows_main
    from flows.pipeline import oskt_pipeline
    from oskt.pipeline import Paths, report

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(stack, "abl", "students.names=[S1]", "students.scenarios=[synth_a->synth_a]")
    oskt_pipeline(params=params)
    assert flows_main(["run", "--params", params, "--ablation", "rand", "--set", "chain.init=random"]) == 0
    cfg = load_config(params=params)
    target = target_from_config(cfg, parent_run_id="")
    teachers = search_runs(target, "tags.`oskt.stage` = 'teacher'")
    assert len(teachers) == 1  # the ablation reused the main run's teacher
    chains = search_runs(target, "tags.`oskt.stage` = 'chain'")
    assert len(chains) == 2 * len(cfg.chain.widths)  # the ablation refined its own chains
    cells = search_runs(target, "tags.`oskt.kind` = 'cell'")
    assert len(cells) == len(jobs_from_config(cfg).cells) + len(cfg.students.seeds)  # + the ablation's OSKT cells
    md = io.read_bytes(report(cfg, Paths(cfg.compute.out_dir), target).markdown).decode()
    assert "| OSKT (rand) |" in md and "- OSKT (rand): `chain.init=random`" in md


def test_nightly_deployment_is_registered_and_the_scheduler_creates_runs(stack) -> None:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.server.services.scheduler import schedule_deployments

    from flows.pipeline import NIGHTLY_CRON, NIGHTLY_TZ, nightly_deployment

    dep_id = nightly_deployment().apply()

    async def check() -> list:
        async with get_client() as client:
            dep = await client.read_deployment(dep_id)
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules] == [
                (NIGHTLY_CRON, NIGHTLY_TZ, True)
            ]
            await schedule_deployments()  # one pass of the server's scheduler service
            return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))

    runs = asyncio.run(check())
    assert runs and all(r.state_name == "Scheduled" for r in runs)
    assert all((r.expected_start_time.hour, r.expected_start_time.minute) == (2, 0) for r in runs)
    assert all(r.expected_start_time.utcoffset().total_seconds() == 0 for r in runs)


def test_prefect_yaml_declares_the_same_nightly_deployment() -> None:
    from flows.pipeline import DEPLOYMENT_NAME, NIGHTLY_CRON, NIGHTLY_TZ

    with open(os.path.join(ROOT, "prefect.yaml")) as f:
        spec = yaml.safe_load(f)
    (dep,) = [d for d in spec["deployments"] if d["name"] == DEPLOYMENT_NAME]
    assert dep["entrypoint"] == "flows/pipeline.py:oskt_pipeline"
    assert dep["schedules"][0]["cron"] == NIGHTLY_CRON and dep["schedules"][0]["timezone"] == NIGHTLY_TZ
    assert dep["work_pool"]["name"]
