"""`make run` / `dvc repro` in a fresh repository made from this tree: DVC runs the stages as processes, the grid
stage runs the Prefect flow on a local Ray, everything logs to one MLflow parent run; then a no-op repro, an
experiment with `-S`, and pushing the outputs to a local remote and to S3 (moto server). Training is the double in
tests/flows/fake_backend.py; DVC, Prefect, Ray, MLflow and S3 are real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from tests.servers import wait_healthy

pytest.importorskip("dvc")
pytest.importorskip("prefect")
pytest.importorskip("moto")

from tests.flows.conftest import stack_env  # noqa: E402

pytestmark = pytest.mark.pipeline
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COPY = [
    "oskt",
    "flows",
    "tests/__init__.py",
    "tests/flows/__init__.py",
    "tests/flows/fake_backend.py",
    "dvc.yaml",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "prefect.yaml",
]
METHODS = ("OSKT", "Scratch", "WtSel", "KD++", "DepGraph")
CELLS = 10  # smoke profile with one student: 5 methods x 2 scenarios


def _run(cmd: list[str], repo: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
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
        [
            os.path.join(os.path.dirname(sys.executable), "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-services",
        ],
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
    """A fresh git repository with the pipeline files and a smoke-sized params.yaml, and the environment to run it
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
        OSKT_RAY_NUM_CPUS="2",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    init = ["config", "init", "--profile", "smoke", "--set", "students.names=[S1]", "-o", "params.yaml"]
    _run([sys.executable, "-m", "oskt", *init], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "pipeline"], repo, env)
    return repo, env


def _post(url: str) -> list:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_make_run_goes_through_dvc_prefect_ray_mlflow(repo) -> None:  # noqa: ANN001
    repo, env = repo
    venv_bin = os.path.dirname(sys.executable)  # as `make run`: the environment is not activated
    plain = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)}
    r = _run([sys.executable, "-m", "oskt.pipeline.main"], repo, plain, timeout=600)
    assert "report: outputs/report/report.md" in r.stdout
    md = _read(os.path.join(repo, "outputs", "report", "report.md"))
    for name in METHODS:
        assert f"| {name} |" in md
    assert "Running stage 'students'" in r.stdout + r.stderr
    with open(os.path.join(repo, "dvc.lock")) as f:
        lock = yaml.safe_load(f)["stages"]
    assert {"prepare", "teacher@synth_a", "chain@synth_a-8", "students", "report"} <= set(lock)
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
    assert len(cells) == CELLS and {c.data.tags["data_version"] for c in cells} == {data_md5}
    # the grid's flow run was recorded by the Prefect server PREFECT_API_URL points at (no temporary server)
    flows = {f["id"]: f["name"] for f in _post(env["PREFECT_API_URL"] + "/flows/filter")}
    runs = [(flows[fr["flow_id"]], fr["state_type"]) for fr in _post(env["PREFECT_API_URL"] + "/flow_runs/filter")]
    assert runs == [("oskt-student-grid", "COMPLETED")]


def test_repro_with_nothing_changed_is_a_fast_noop(repo) -> None:  # noqa: ANN001
    repo, env = repo
    t0 = time.perf_counter()
    r = _run([sys.executable, "-m", "dvc", "repro"], repo, env)
    seconds = time.perf_counter() - t0
    assert "Running stage" not in r.stdout
    assert seconds <= 5.0, f"no-op dvc repro took {seconds:.1f} s"


def test_exp_run_with_a_new_seed_reruns_only_the_grid_and_report(repo) -> None:  # noqa: ANN001
    repo, env = repo
    r = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "students.seeds=[0,1]"], repo, env, timeout=600)
    out = r.stdout + r.stderr
    assert "Running stage 'students'" in out and "Running stage 'report'" in out
    for stage in ("prepare", "teacher@synth_a", "chain@synth_a-8"):
        assert f"Running stage '{stage}'" not in out
    cells = os.listdir(os.path.join(repo, "outputs", "students"))
    assert len([c for c in cells if "__seed1__" in c]) == CELLS and len([c for c in cells if "__seed0__" in c]) == CELLS
    assert "±" in _read(os.path.join(repo, "outputs", "report", "report.md"))  # mean ± std over two seeds


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
        for name in METHODS:
            assert f"| {name} |" in _read(os.path.join(repo, "outputs", "report", "report.md"))
    finally:
        server.stop()
