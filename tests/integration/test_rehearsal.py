"""The paper path, so it cannot silently break again (issue #18): ``oskt rehearse --profile paper --small`` in a
subprocess — its own DVC workspace, stand-ins in the real Market-1501 and CUHK03-NP layouts, the full-width
ResNet-50 teacher at 256×128, one chain, students S1 and S4 (expanded), every method, the KD++ / OFA source phase,
one iteration per phase, through DVC → Prefect → Ray → MLflow — then what it must leave: every cell's result and
MLflow run, the report with every method × student, the cost table (files, results record, the parent run's
artifacts), and a project ``params.yaml`` that was never touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("ray")
pytest.importorskip("mlflow")

from tests.flows.conftest import stack_env  # noqa: E402

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHOD_ROWS = ("OSKT", "Scratch", "WTSel", "KD++", "DepGraph", "OFA-KD", "RSD")


def _text(*parts: str) -> str:
    with open(os.path.join(*parts)) as f:
        return f.read()


def _json(*parts: str):  # noqa: ANN202
    return json.loads(_text(*parts))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, subprocess.CompletedProcess]:
    tmp = str(tmp_path_factory.mktemp("rehearsal"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "RAY_"))}
    env.update(stack_env(tmp))
    params = os.path.join(tmp, "params.yaml")  # a user's params file next to the command: must stay as it is
    with open(params, "w") as f:
        f.write("profile: quick\n")
    out, record = os.path.join(tmp, "r"), os.path.join(tmp, "rehearsal.json")
    cmd = [sys.executable, "-m", "oskt", "rehearse", "--profile", "paper", "--small", "--iters", "1", "--out", out]
    cmd += ["--record", record, "--doc", os.path.join(tmp, "cost.md")]
    r = subprocess.run(cmd, cwd=tmp, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    assert _text(params) == "profile: quick\n"
    return tmp, out, r


def test_every_cell_and_stage_finished_and_is_in_mlflow(rehearsal) -> None:  # noqa: ANN001
    tmp, out, r = rehearsal
    rec = _json(tmp, "rehearsal.json")["paper-small"]
    assert rec["cells_total"] == 2 * len(METHOD_ROWS) == rec["cells_ok"] and rec["jobs_missing"] == []
    assert {"prepare", "teacher@market1501", "chain@market1501-8", "students", "report"} <= set(rec["stages_ok"])
    assert rec["seconds"] > 0 and rec["peak_rss_mib"] > 0 and rec["gpu_hours_estimate"] > 0
    assert "rehearsal paper-small: 14/14 cells" in r.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("rehearsal-paper")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    cells = [x for x in runs if x.data.tags.get("oskt.kind") == "cell" and x.info.status == "FINISHED"]
    assert len({c.data.tags["oskt.cell"] for c in cells}) == 14
    assert all(c.data.tags.get("oskt.node") for c in cells)
    (parent,) = [x for x in runs if x.data.tags.get("oskt.kind") == "pipeline"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "cost")} == {"cost/cost.md", "cost/cost.json"}
    assert client.get_run(parent.info.run_id).data.metrics["rehearsal/cells_ok"] == 14


def test_the_paper_phases_ran_at_full_size_with_the_distillers_source_phase(rehearsal) -> None:  # noqa: ANN001
    _, out, _ = rehearsal
    from oskt.checkpoint import load_checkpoint
    from oskt.models.spec import ModelSpec

    spec = ModelSpec.from_dict(
        load_checkpoint(os.path.join(out, "out", "teachers", "market1501", "teacher.pt"))["spec"]
    )
    assert spec.name == "T" and spec.in_planes == 64 and tuple(spec.img_size) == (256, 128)  # the full ResNet-50
    students = os.path.join(out, "out", "students")
    for method in ("kdpp", "ofa"):  # cross-scenario distillers: a source phase on Market-1501, then CUHK03-NP
        cell = os.path.join(students, f"market1501--cuhk03__S4__{method}__seed0__fs1")
        assert os.path.exists(os.path.join(cell, "distil", "result.json"))
        assert os.path.exists(os.path.join(cell, "finetune", "student.pt"))
    hist = _json(students, "market1501--cuhk03__S4__oskt__seed0__fs1", "finetune", "history.json")
    assert [h["iters"] for h in hist] == [1.0]


def test_the_report_has_every_method_and_student(rehearsal) -> None:  # noqa: ANN001
    _, out, _ = rehearsal
    md = _text(out, "out", "report", "report.md")
    assert "## market1501 → cuhk03" in md and "Missing" not in md
    for name in METHOD_ROWS:
        (row,) = [line for line in md.splitlines() if line.startswith(f"| {name} |")]
        assert row.count("—") == 0 and row.count("/") == 2  # a number for S1 and for S4


def test_the_cost_table_is_written_with_the_measured_phase_kinds(rehearsal) -> None:  # noqa: ANN001
    tmp, out, _ = rehearsal
    cost = _json(out, "cost.json")
    rows = {(r["kind"], r["name"]): r for r in cost["rows"]}
    measured = {k for k, r in rows.items() if r["seconds_per_iter"] is not None}
    assert measured == {("teacher", "market1501"), ("chain", "w8")} | {
        ("cell", f"{s} {m}")
        for s in ("S1", "S4")
        for m in ("oskt", "scratch", "wtsel", "kdpp", "depgraph", "ofa", "rsd")
    }
    assert all(rows[k]["peak_rss_mib"] > 0 and rows[k]["seconds_per_iter"] > 0 for k in measured)
    assert rows[("cell", "S4 kdpp")]["distil_seconds_per_iter"] > 0
    doc = _text(tmp, "cost.md")
    assert "### `paper`" in doc and "TFLOP/s" in doc and "| **total** |" in doc


def test_no_run_checks_again_without_training_or_losing_the_time(rehearsal) -> None:  # noqa: ANN001
    tmp, out, _ = rehearsal
    results = {}
    for dirpath, _, files in os.walk(os.path.join(out, "out")):
        if "result.json" in files:
            results[dirpath] = os.path.getmtime(os.path.join(dirpath, "result.json"))
    record = os.path.join(tmp, "again.json")
    cmd = [sys.executable, "-m", "oskt", "rehearse", "--profile", "paper", "--small", "--out", out, "--no-run"]
    env = {**stack_env(tmp), "PATH": os.environ["PATH"], "PYTHONPATH": ROOT}
    r = subprocess.run([*cmd, "--record", record], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    again, first = _json(record)["paper-small"], _json(tmp, "rehearsal.json")["paper-small"]
    assert again["cells_ok"] == first["cells_ok"] == 14 and again["seconds"] == first["seconds"]
    assert again["seconds_last_run"] == 0.0
    for dirpath, mtime in results.items():  # nothing trained again
        assert os.path.getmtime(os.path.join(dirpath, "result.json")) == mtime
