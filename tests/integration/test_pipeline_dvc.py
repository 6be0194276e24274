"""The real pipeline, as a user runs it: `make run`'s command in a fresh repository made from this tree, DVC running
each stage as a process, the grid stage running the Prefect flow on a local Ray, everything logged to one MLflow
parent run, real (smoke-sized) training. Then the invariants of the jobs design, each through `oskt plan` and
`oskt run` on that finished pipeline:

* a no-op `dvc repro`;
* adding a chain width reruns only the new chain and the OSKT cell whose chosen chain changes;
* a KD++ setting reruns only the KD++ cells; `students.lr` every cell; `tracking.uri` / a progress setting nothing;
* adding a source trains only its teacher and chains; the existing teacher is untouched (same file, same mtime);
* SIGTERM to the main job mid-teacher: no process of the job is alive 10 s later, the rerun resumes;
* pushing the outputs to a local DVC remote and to S3 (moto server).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.servers import wait_healthy

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("moto")
psutil = pytest.importorskip("psutil")

from tests.flows.conftest import stack_env  # noqa: E402

pytestmark = pytest.mark.pipeline
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COPY = ["oskt", "flows", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "prefect.yaml"]
# smoke, shrunk: teacher r16-2-4-8, chain 4; students r4-2-4-8 (chain 4's width) and S1 (chain 4 now; chain 8 once it
# exists); a baseline without upstream (scratch), one with its own settings (kdpp); one scenario: 6 cells
SMALL = [
    "students.names=[r4-2-4-8,S1]",
    "students.methods=[oskt,scratch,kdpp]",
    "students.scenarios=[synth_a->synth_a]",
    "chain.widths=[4]",
    "compute.device=cpu",
    "compute.ray_num_cpus=2",
    "compute.num_threads=1",  # the same thread count in every run: same figures (the kill test compares reports)
]


def _run(cmd: list[str], repo: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 (what PREFECT_API_URL points a team at); stopped with its process group."""
    tmp = str(tmp_path_factory.mktemp("prefect"))
    port = _free_port()
    env = {**os.environ, **stack_env(tmp), "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp}/p.db"}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "prefect"), "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port), "--no-services"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url + "/health", 120, "prefect server")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> tuple[str, dict[str, str]]:
    """A fresh git repository with the pipeline files and a small smoke params.yaml, and the environment to run it
    (Prefect API = the real server above)."""
    tmp = str(tmp_path_factory.mktemp("dvc"))
    repo = os.path.join(tmp, "repo")
    for rel in COPY:
        src, dst = os.path.join(ROOT, rel), os.path.join(repo, rel)
        if os.path.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy(src, dst)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OSKT_", "PREFECT_", "AWS_"))}
    env.update(stack_env(tmp))
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        PREFECT_API_URL=prefect_server,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    init = ["config", "init", "--profile", "smoke", "-o", "params.yaml", *[a for o in SMALL for a in ("--set", o)]]
    _run([sys.executable, "-m", "oskt", *init], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "pipeline"], repo, env)
    return repo, env


def _post(url: str) -> list:
    import urllib.request

    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _set(repo: str, **changes: object) -> None:
    """Edit params.yaml as a user would (dotted keys)."""
    path = os.path.join(repo, "params.yaml")
    params = yaml.safe_load(_read(path))
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with open(path, "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)


def _snapshot(repo: str) -> dict[str, tuple[str, float]]:
    """Every job folder's result: (key, mtime of result.json)."""
    out = {}
    root = os.path.join(repo, "outputs")
    for kind in ("teachers", "chains", "students"):
        for dirpath, _, files in os.walk(os.path.join(root, kind)):
            if "result.json" in files and not dirpath.endswith(("finetune", "distil")):
                p = os.path.join(dirpath, "result.json")
                out[os.path.relpath(dirpath, root)] = (json.loads(_read(p))["key"], os.path.getmtime(p))
    return out


def _retrained(before: dict, after: dict) -> set[str]:
    return {k for k in after if k not in before or after[k] != before[k]}


def _plan(repo: str, env: dict[str, str]) -> list[dict]:
    r = _run([sys.executable, "-m", "oskt", "plan", "--json"], repo, env)
    return json.loads(r.stdout)


def _oskt_run(repo: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "oskt", "run"], repo, env, timeout=900)


def test_make_run_goes_through_dvc_prefect_ray_mlflow(repo) -> None:  # noqa: ANN001
    repo, env = repo
    venv_bin = os.path.dirname(sys.executable)  # as `make run`: the environment is not activated
    plain = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)}
    r = _run([sys.executable, "-m", "flows", "run"], repo, plain, timeout=900)
    assert "report: outputs/report/report.md" in r.stdout
    # what a person watching sees: one line per finished cell with its figures, no request logs, no colour codes
    out = r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if re.match(r"^\[\d/6\] \S+ (oskt|scratch|kdpp) synth_a→synth_a ", ln)]
    assert len(lines) == 6 and all(re.search(r"mAP \d+\.\d  R1 \d+\.\d · \d+ s", ln) for ln in lines), lines
    assert "INFO httpx" not in out and "HTTP Request" not in out and "\x1b[" not in out
    assert "Finished in state" not in out  # Prefect's per-task state lines stay on the Prefect server
    assert re.search(r"teacher epoch 1/1: loss [\d.]+, lr .*, [\d.]+ s", out)
    md = _read(os.path.join(repo, "outputs", "report", "report.md"))
    for name in ("OSKT", "Scratch", "KD++"):
        assert f"| {name} |" in md
    assert "Running stage 'students'" in r.stdout + r.stderr
    lock = yaml.safe_load(_read(os.path.join(repo, "dvc.lock")))["stages"]
    assert {"prepare", "teacher@synth_a", "chain@synth_a-4", "students", "report"} <= set(lock)
    data_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlruns.db")
    exp = client.get_experiment_by_name("oskt-smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [x for x in runs if x.data.tags.get("oskt.kind") == "pipeline"]
    stage_runs = {
        x.data.tags.get("oskt.stage") for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert {"prepare", "teacher", "chain", "students"} <= stage_runs  # separate processes, one parent
    cells = [x for x in runs if x.data.tags.get("oskt.kind") == "cell"]
    assert len(cells) == 6 and {c.data.tags["data_version"] for c in cells} == {data_md5}
    assert not os.path.exists(os.path.join(repo, "outputs", ".oskt-run.json"))  # the parent-run file is gone
    # the grid's flow run was recorded by the Prefect server PREFECT_API_URL points at (no temporary server)
    flows = {f["id"]: f["name"] for f in _post(env["PREFECT_API_URL"] + "/flows/filter")}
    runs = [(flows[fr["flow_id"]], fr["state_type"]) for fr in _post(env["PREFECT_API_URL"] + "/flow_runs/filter")]
    assert runs == [("oskt-student-grid", "COMPLETED")]
    assert {r["state"] for r in _plan(repo, env)} == {"done"}


def test_repro_with_nothing_changed_is_a_fast_noop(repo) -> None:  # noqa: ANN001
    repo, env = repo
    t0 = time.perf_counter()
    r = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    assert "Running stage" not in r.stdout
    assert time.perf_counter() - t0 <= 10.0


def test_oskt_eval_on_a_cell_checkpoint_of_the_run_gives_the_cell_s_own_figure(repo) -> None:  # noqa: ANN001
    """The README's `oskt eval` on a student the pipeline trained: the plain protocol reproduces the mAP the cell
    recorded, and re-ranking / flip / the pictures come with it."""
    repo, env = repo
    cell = os.path.join(repo, "outputs", "students", "synth_a--synth_a__S1__oskt__seed0__fs1")
    out = os.path.join(repo, "eval-s1")
    ckpt = os.path.join(cell, "finetune", "student.pt")
    cmd = [sys.executable, "-m", "oskt", "eval", "--checkpoint", ckpt, "--data", "synth_a", "--no-track", "-o", out]
    _run(cmd, repo, env)
    recorded = json.loads(_read(os.path.join(cell, "result.json")))["metrics"]["mAP"]
    assert json.loads(_read(os.path.join(out, "metrics.json")))["mAP"] == pytest.approx(recorded, abs=1e-6)
    r = _run(
        [sys.executable, "-m", "oskt", "eval", "--checkpoint", ckpt, "--data", "synth_a", "--rerank", "--flip"]
        + ["--visrank", "5", "--visrank-max", "2", "--no-track", "-o", out + "-rr"],
        repo,
        env,
    )
    assert "re-ranking" in r.stdout and len(os.listdir(os.path.join(out + "-rr", "visrank"))) == 2
    assert {r["state"] for r in _plan(repo, env)} == {"done"}  # evaluating trained nothing and changed no job


def test_adding_a_chain_width_reruns_only_the_new_chain_and_the_oskt_cell_it_changes(repo) -> None:  # noqa: ANN001
    repo, env = repo
    before = _snapshot(repo)
    _set(repo, chain__widths=[4, 8])
    plan = {r["label"]: r for r in _plan(repo, env)}
    assert plan["synth_a/w8"]["state"] == "missing" and plan["synth_a/w4"]["state"] == "done"
    s1 = plan["synth_a--synth_a__S1__oskt__seed0__fs1"]
    assert s1["state"] == "stale" and any(c.startswith("chain: chain ") for c in s1["changed"])
    assert {r["label"] for r in plan.values() if r["state"] != "done"} == {
        "synth_a/w8",
        "synth_a--synth_a__S1__oskt__seed0__fs1",
    }
    _oskt_run(repo, env)
    assert _retrained(before, _snapshot(repo)) == {
        os.path.join("chains", "synth_a", "w8"),
        os.path.join("students", "synth_a--synth_a__S1__oskt__seed0__fs1"),
    }


def test_a_kdpp_setting_reruns_only_the_kdpp_cells(repo) -> None:  # noqa: ANN001
    repo, env = repo
    before = _snapshot(repo)
    _set(repo, baselines__kdpp__temperature=3.0)
    stale = [r for r in _plan(repo, env) if r["state"] != "done"]
    assert {r["label"] for r in stale} == {f"synth_a--synth_a__{s}__kdpp__seed0__fs1" for s in ("r4-2-4-8", "S1")}
    assert all(r["changed"] == ["settings.temperature: 4.0 -> 3.0"] for r in stale)
    r = _oskt_run(repo, env)
    assert {os.path.basename(k) for k in _retrained(before, _snapshot(repo))} == {r["label"] for r in stale}
    assert "4 of 6 cells finished earlier (reused); 2 to train" in r.stderr  # only 2 cells reached Ray


def test_tracking_uri_and_progress_rerun_nothing(repo) -> None:  # noqa: ANN001
    repo, env = repo
    before = _snapshot(repo)
    _set(repo, tracking__uri=f"sqlite:///{repo}/other.db", train__progress=True, data__num_workers=0)
    assert {r["state"] for r in _plan(repo, env)} == {"done"}
    _oskt_run(repo, env)
    assert _retrained(before, _snapshot(repo)) == set()
    md = _read(os.path.join(repo, "outputs", "report", "report.md"))  # from the new store, cells restored there
    assert "| KD++ |" in md and "Missing" not in md


def test_students_lr_reruns_every_cell_and_nothing_upstream(repo) -> None:  # noqa: ANN001
    repo, env = repo
    before = _snapshot(repo)
    _set(repo, students__lr=0.002)
    plan = _plan(repo, env)
    assert {r["label"] for r in plan if r["state"] != "done"} == {r["label"] for r in plan if r["kind"] == "cell"}
    _oskt_run(repo, env)
    assert {k.split(os.sep)[0] for k in _retrained(before, _snapshot(repo))} == {"students"}
    assert len(_retrained(before, _snapshot(repo))) == 6


def test_adding_a_source_trains_only_its_teacher_and_chains(repo) -> None:  # noqa: ANN001
    repo, env = repo
    before = _snapshot(repo)
    teacher_pt = os.path.join(repo, "outputs", "teachers", "synth_a", "teacher.pt")
    mtime = os.path.getmtime(teacher_pt)
    _set(repo, data__sources=["synth_a", "synth_b"])
    assert {r["label"] for r in _plan(repo, env) if r["state"] != "done"} == {"synth_b", "synth_b/w4", "synth_b/w8"}
    r = _oskt_run(repo, env)
    assert "Running stage 'teacher@synth_a'" not in r.stdout + r.stderr  # DVC: its own data record is unchanged
    # the grid stage ran again (the data changed) with every cell finished: reused without starting Ray
    assert "Running stage 'students'" in r.stdout and "Started a local Ray instance" not in r.stderr
    assert _retrained(before, _snapshot(repo)) == {
        os.path.join("teachers", "synth_b"),
        os.path.join("chains", "synth_b", "w4"),
        os.path.join("chains", "synth_b", "w8"),
    }
    assert os.path.getmtime(teacher_pt) == mtime


def _tree(pid: int) -> list:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def test_sigterm_mid_teacher_stops_every_process_and_the_rerun_resumes(repo) -> None:  # noqa: ANN001
    repo, env = repo
    _set(repo, teacher__epochs=60, data__sources=["synth_a"])  # a new teacher job, long enough to be stopped
    last = os.path.join(repo, "outputs", "teachers", "synth_a", "last.pt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "oskt", "run"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline, seen = time.time() + 300, {}
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            for p in _tree(proc.pid):  # every process the job started, while it runs
                seen[p.pid] = (p, " ".join(p.cmdline())[:120])
        if os.path.exists(last) and os.path.getsize(last) > 0:
            time.sleep(0.3)  # into a later epoch
            break
        time.sleep(0.2)
    assert os.path.exists(last), proc.communicate()[0][-3000:]
    assert any("flows stage teacher" in c for _, c in seen.values())
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    time.sleep(10)
    alive = [(pid, c) for pid, (p, c) in seen.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive
    from oskt.checkpoint import load_checkpoint

    epoch = load_checkpoint(last, kind="train_state")["extra"]["epoch"]
    assert 0 <= epoch < 59
    # the stage again through DVC (what follows it would only retrain from the new teacher: not what is tested)
    r = _run([sys.executable, "-m", "dvc", "repro", "teacher@synth_a"], repo, env, timeout=900)
    rel = os.path.join("outputs", "teachers", "synth_a", "last.pt")
    assert f"teacher: resuming from {rel} after epoch {epoch + 1}/60" in r.stdout + r.stderr
    assert json.loads(_read(os.path.join(os.path.dirname(last), "result.json")))["metrics"]["epochs"] == 60
    assert not os.path.exists(last)
    _set(repo, teacher__epochs=1)  # back to the settings of outputs/report, which the kill test compares with


def test_outputs_push_to_the_local_remote_and_to_s3(repo) -> None:  # noqa: ANN001
    repo, env = repo
    _run([sys.executable, "-m", "dvc", "push"], repo, env)
    assert os.listdir(os.path.join(repo, "dvc-remote", "files", "md5"))
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3env = {
            **env,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="oskt-dvc")
        _run([sys.executable, "-m", "dvc", "remote", "add", "s3", "s3://oskt-dvc/store"], repo, s3env)
        # the endpoint is machine-specific: it goes to .dvc/config.local, never into the committed config
        _run(
            [sys.executable, "-m", "dvc", "remote", "modify", "--local", "s3", "endpointurl", f"http://{host}:{port}"],
            repo,
            s3env,
        )
        _run([sys.executable, "-m", "dvc", "push", "-r", "s3"], repo, s3env)
        shutil.rmtree(os.path.join(repo, ".dvc", "cache"))
        shutil.rmtree(os.path.join(repo, "outputs", "report"))
        _run([sys.executable, "-m", "dvc", "pull", "-r", "s3", "report"], repo, s3env)
        assert "| OSKT |" in _read(os.path.join(repo, "outputs", "report", "report.md"))
    finally:
        server.stop()


def _tables(md: str) -> str:
    """The report's result tables (the figures), without the header lines that name the store or the profile."""
    return "\n".join(ln for ln in md.splitlines() if ln.startswith("|"))


def test_sigkill_of_the_whole_job_mid_grid_loses_nothing_and_gives_the_same_report(repo) -> None:  # noqa: ANN001
    """kill -9 of every process of `oskt run` (DVC, the grid stage, Ray workers) half-way through the grid, into an
    output folder of its own: the rerun trains only what had not finished, and the report's tables equal those of
    the uninterrupted run of the same settings (`outputs/`, finished by the tests before; this test runs last: it
    leaves dvc.lock pointing at its own folder)."""
    repo, env = repo
    clean = _tables(_read(os.path.join(repo, "outputs", "report", "report.md")))
    _set(repo, compute__out_dir="killed", tracking__uri=f"sqlite:///{repo}/killed.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "oskt", "run"],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    students = os.path.join(repo, "killed", "students")
    deadline, done = time.time() + 600, []
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in os.listdir(students)] if os.path.isdir(students) else []
        done = [d for d in done if os.path.exists(os.path.join(students, d, "result.json"))]
        if len(done) >= 2:
            break
        time.sleep(0.2)
    assert 2 <= len(done) < 6, done
    tree = _tree(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:  # Ray's own processes live in their own sessions: the whole job dies, as in a crash
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()
    before = {d: os.path.getmtime(os.path.join(students, d, "result.json")) for d in done}
    _oskt_run(repo, env)
    after = {d: os.path.getmtime(os.path.join(students, d, "result.json")) for d in done}
    assert after == before  # finished cells were not trained again
    assert len([d for d in os.listdir(students) if os.path.exists(os.path.join(students, d, "result.json"))]) == 6
    assert _tables(_read(os.path.join(repo, "killed", "report", "report.md"))) == clean
