"""Stage functions, idempotent grid cells and the MLflow report, with MLflow real (SQLite) and training replaced by
the doubles of tests/fakes.py, passed as arguments (the engine here is serial; tests/flows runs the same cells
through Prefect on Ray, tests/integration/test_pipeline_dvc.py the whole pipeline with real training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("mlflow")

from oskt.config import Config, dump_config, load_config  # noqa: E402
from oskt.data.refs import dataset_ref  # noqa: E402
from oskt.pipeline import datasets_used, jobs_from_config, prepare_data, refine_chain, report, train_teacher  # noqa: E402
from oskt.pipeline.grid import serial  # noqa: E402
from oskt.pipeline.records import Paths, TrackingTarget  # noqa: E402
from oskt.pipeline.run import pipeline_run  # noqa: E402
from oskt.pipeline.stages import train_students  # noqa: E402
from oskt.pipeline.tracking import search_runs  # noqa: E402
from tests.fakes import cell_trainer, fake_chain, fake_count, fake_teacher  # noqa: E402

pytestmark = pytest.mark.pipeline
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(tmp: str, *extra: str) -> Config:
    return load_config(
        profile="smoke",
        overrides=[
            f"compute.out_dir={tmp}/out",
            f"data.root={tmp}/data",
            f"tracking.uri=sqlite:///{tmp}/mlruns.db",
            *extra,
        ],
    )


@pytest.fixture()
def env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # data_version reads ./dvc.lock: not the checkout's
    return str(tmp_path)


def _upstream(cfg: Config, target: TrackingTarget) -> Paths:
    paths = Paths(cfg.compute.out_dir)
    prepare_data([dataset_ref(n, cfg.data) for n in datasets_used(cfg)], paths, target)
    g = jobs_from_config(cfg)
    for job in g.teachers.values():
        train_teacher(job, paths, target, train=fake_teacher)
    for job in g.chains.values():
        refine_chain(job, paths, target, train=fake_chain)
    return paths


def _grid(cfg: Config, paths: Paths, target: TrackingTarget, markers: str, engine=serial, **kw: object) -> list:  # noqa: ANN001
    return train_students(
        jobs_from_config(cfg).cells, paths, target, engine=engine, train=cell_trainer(markers, **kw), count=fake_count
    )


class _SpyEngine:
    """The serial engine, recording the cells each call was handed (a Ray / Prefect engine starts per call)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, fn, cells, on_done=None) -> list:  # noqa: ANN001
        self.calls.append([c.label for c in cells])
        return serial(fn, cells, on_done)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _attempts(tmp: str) -> list[str]:
    path = os.path.join(tmp, "attempts.txt")
    return _read(path).split("\n")[:-1] if os.path.exists(path) else []


def test_stages_log_a_run_tree_and_the_report_lists_every_method(env: str) -> None:
    cfg = _cfg(env)
    with pipeline_run(cfg) as target:
        assert target.artifact_location == os.path.join(env, "mlartifacts")
        paths = _upstream(cfg, target)
        results = _grid(cfg, paths, target, env)
        rec = report(cfg, paths, target)
    assert len(results) == len(jobs_from_config(cfg).cells) and not any(r.skipped for r in results)
    md = _read(rec.markdown)
    for name in ("OSKT", "Scratch", "WTSel", "KD++", "DepGraph"):
        assert f"| {name} |" in md
    assert rec.num_runs == len(results)
    # one parent; stage and cell runs below it; cell runs carry the identifying tags, params and per-epoch metrics
    parent = search_runs(target, "tags.`oskt.kind` = 'pipeline'")
    assert len(parent) == 1
    cells = search_runs(target, "tags.`oskt.kind` = 'cell'")
    assert len(cells) == len(results)
    students_run = search_runs(target, "tags.`oskt.stage` = 'students'")[0]
    r = cells[0]
    assert r.data.tags["mlflow.parentRunId"] == students_run.info.run_id
    assert students_run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    for tag in ("method", "student", "scenario", "seed", "git_commit", "data_version", "oskt.key", "oskt.node"):
        assert tag in r.data.tags, tag
    assert r.data.tags["data_version"].startswith("manifest-")
    # the job's whole settings as params, fields at their declared default included (smoke's 1 epoch is one)
    assert r.data.params["job.recipe.ids_per_batch"] == str(cfg.train.ids_per_batch)
    assert r.data.params["job.method"] == r.data.tags["method"]
    assert r.data.params["job.recipe.epochs"] == str(cfg.students.epochs)
    assert {"mAP", "rank1", "params", "macs"} <= set(r.data.metrics)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(target.uri)
    assert len(client.get_metric_history(r.info.run_id, "loss")) == cfg.students.epochs
    assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"checkpoint", "result.json"}
    teacher = search_runs(target, "tags.`oskt.stage` = 'teacher'")[0]
    assert {a.path for a in client.list_artifacts(teacher.info.run_id)} >= {"checkpoint", "result.json"}
    # a chain run: the chain and the teacher refined with it, once each, under checkpoint/
    chain_run = search_runs(target, "tags.`oskt.stage` = 'chain'")[0]
    top = {a.path for a in client.list_artifacts(chain_run.info.run_id)}
    assert "teacher_refined.pt" not in top and "checkpoint" in top
    assert {a.path for a in client.list_artifacts(chain_run.info.run_id, "checkpoint")} == {
        "checkpoint/chain.pt",
        "checkpoint/teacher_refined.pt",
    }
    # `oskt report` rebuilds the same tables from MLflow alone
    from oskt.cli import main as oskt_main

    params = os.path.join(env, "params.yaml")
    with open(params, "w") as f:
        f.write(dump_config(cfg))
    os.remove(rec.markdown)
    assert oskt_main(["report", "--params", params]) == 0
    assert _read(rec.markdown) == md
    rep = search_runs(target, "tags.`oskt.kind` = 'report'")[-1]
    assert {a.path for a in client.list_artifacts(rep.info.run_id, "report")} >= {
        "report/report.md",
        "report/report.csv",
        "report/cells.csv",
        "report/acc_vs_params.png",
        "report/acc_vs_macs.png",
    }


def test_finished_cells_are_reused_and_only_changed_work_reruns(env: str) -> None:
    cfg = _cfg(env)
    with pipeline_run(cfg) as target:
        paths = _upstream(cfg, target)
        _grid(cfg, paths, target, env)
        n = len(_attempts(env))
        spy = _SpyEngine()
        again = _grid(cfg, paths, target, env, engine=spy)
        assert all(r.skipped for r in again) and len(_attempts(env)) == n
        assert spy.calls == []  # nothing left to train: the engine (Ray, a Prefect flow) is never started
        assert [r.label for r in again] == [c.label for c in jobs_from_config(cfg).cells]
        assert train_teacher(jobs_from_config(cfg).teachers["synth_a"], paths, target, train=fake_teacher).reused
        # a new seed runs only the new cells, and only they reach the engine; results keep the grid's order
        more = _cfg(env, "students.seeds=[0,1]")
        res = _grid(more, paths, target, env, engine=spy)
        assert sum(not r.skipped for r in res) == n and len(_attempts(env)) == 2 * n
        assert spy.calls == [[r.label for r in res if not r.skipped]] and all("seed1" in c for c in spy.calls[0])
        assert [r.label for r in res] == [c.label for c in jobs_from_config(more).cells]
        # a recipe change reruns every cell
        changed = _cfg(env, "students.epochs=2")
        assert not any(r.skipped for r in _grid(changed, paths, target, env))


def test_a_missing_upstream_job_is_one_clear_error_before_any_cell(env: str) -> None:
    from oskt.pipeline.cell import StageError

    cfg = _cfg(env)
    with pipeline_run(cfg) as target:
        paths = _upstream(cfg, target)
        changed = _cfg(env, "chain.epochs=2")  # the chain job changed: its folder holds another key's chain
        with pytest.raises(StageError, match=r"chain synth_a/w8 is missing or stale in .*chains/synth_a/w8"):
            _grid(changed, paths, target, env)
    assert _attempts(env) == []


def test_mlflow_store_reset_restores_finished_cells_without_training(env: str) -> None:
    cfg = _cfg(env)
    with pipeline_run(cfg) as target:
        paths = _upstream(cfg, target)
        _grid(cfg, paths, target, env)
        first = _read(report(cfg, paths, target).markdown)
    n = len(_attempts(env))
    cfg = _cfg(env, f"tracking.uri=sqlite:///{env}/fresh.db")  # a new, empty tracking store
    with pipeline_run(cfg) as target:
        assert _read(report(cfg, paths, target).markdown) == first  # restored from the cells' result.json
        assert search_runs(target, "tags.`oskt.restored` = 'true'")
        res = _grid(cfg, paths, target, env)
        assert all(r.skipped for r in res) and len(_attempts(env)) == n


DRIVER = """
import sys
from oskt.config import load_config
from oskt.pipeline import jobs_from_config
from oskt.pipeline.records import Paths
from oskt.pipeline.run import stage_target
from oskt.pipeline.stages import train_students
from tests.fakes import cell_trainer, fake_count

cfg = load_config(params=sys.argv[1])
train_students(jobs_from_config(cfg).cells, Paths(cfg.compute.out_dir), stage_target(cfg),
               train=cell_trainer(sys.argv[2], sleep=0.4), count=fake_count)
"""


def test_killed_grid_resumes_with_nothing_lost_and_the_same_report(env: str) -> None:
    cfg = _cfg(env, "students.names=[S1]")
    with pipeline_run(cfg) as target:
        paths = _upstream(cfg, target)
    params = os.path.join(env, "params.yaml")
    with open(params, "w") as f:
        f.write(dump_config(cfg))
    driver = os.path.join(env, "driver.py")
    with open(driver, "w") as f:
        f.write(textwrap.dedent(DRIVER))
    proc = subprocess.Popen(
        [sys.executable, driver, params, env],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    students = paths.students_dir()
    deadline = time.time() + 120
    done: list[str] = []
    while time.time() < deadline:
        done = [
            d
            for d in (os.listdir(students) if os.path.isdir(students) else [])
            if os.path.exists(os.path.join(students, d, "result.json"))
        ]
        if len(done) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = set(done)
    cells = jobs_from_config(cfg).cells
    assert 3 <= len(finished_before) < len(cells)
    before = len(_attempts(env))
    with pipeline_run(cfg) as target:
        _grid(cfg, paths, target, env)
    rerun = {line.split()[0] for line in _attempts(env)[before:]}
    assert not rerun & finished_before  # finished cells were not trained again
    assert len(rerun | finished_before) == len(cells)
    with pipeline_run(cfg) as target:
        resumed = _read(report(cfg, paths, target).markdown)
        killed = search_runs(target, "tags.`oskt.kind` = 'cell' and attributes.status = 'KILLED'")
    assert len(killed) <= 1  # the cell that was mid-way when the run died, closed as KILLED on the rerun
    # the same report as an uninterrupted run of the same config
    clean = _cfg(os.path.join(env, "clean"), "students.names=[S1]")
    os.makedirs(os.path.join(env, "clean"))
    with pipeline_run(clean) as target:
        cp = _upstream(clean, target)
        _grid(clean, cp, target, os.path.join(env, "clean"))
        assert _read(report(clean, cp, target).markdown) == resumed
