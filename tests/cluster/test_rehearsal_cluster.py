"""The grid on a multi-node Ray cluster, with nothing shared through a local disk (issue #18): a
``ray.cluster_utils.Cluster`` of two nodes (one CPU each, their own raylets, loopback only) started here, an MLflow
server over HTTP, and data, outputs and MLflow artifacts on a moto S3 server. The whole pipeline runs through
``oskt run --orchestrator prefect --ray-address <cluster>`` in a subprocess (the Prefect flow maps the cells onto
the cluster with prefect-ray), real smoke-sized training. Then: cells ran on both nodes (``oskt.node`` tags and
``node`` in every cell's ``result.json`` on S3), every cell's result is on S3, the report was built there, and no
output was written to the local disk.

Its own directory: the flow tests' session fixture runs a local Ray in-process, and this cluster is a separate set
of processes the driver subprocess connects to.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("ray")
pytest.importorskip("prefect")
pytest.importorskip("mlflow")
pytest.importorskip("moto")

from tests.flows.conftest import stack_env  # noqa: E402
from tests.servers import forget_s3_clients, wait_healthy  # noqa: E402

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "oskt-cluster"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """moto S3 + an MLflow server + a 2-node Ray cluster; yields (tmp root, the driver's environment)."""
    from moto.server import ThreadedMotoServer

    tmp = str(tmp_path_factory.mktemp("cluster"))
    mp = pytest.MonkeyPatch()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # the cluster's nodes inherit this environment (credentials reach workers through it, never a task's metadata)
    env = {**stack_env(tmp), **CREDS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PREFECT_API_URL"):
        mp.delenv(k, raising=False)
    import boto3

    forget_s3_clients()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    mport = _free_port()
    mlflow = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db"]
        + ["--host", "127.0.0.1", "--port", str(mport), "--workers", "1", "--no-serve-artifacts"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from flows.rehearse import local_cluster

    try:
        wait_healthy(f"http://127.0.0.1:{mport}/health", 120, "mlflow server")
        with local_cluster(2, 1) as ray_env:
            yield (
                tmp,
                {
                    **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")},
                    **ray_env,
                    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mport}",
                    "PYTHONPATH": ROOT,
                },
            )
    finally:
        os.killpg(mlflow.pid, signal.SIGTERM)
        try:
            mlflow.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(mlflow.pid, signal.SIGKILL)
            mlflow.wait()
        moto.stop()
        mp.undo()
        forget_s3_clients()  # the s3fs clients made here point at this test's S3 server


def test_grid_on_a_two_node_cluster_with_everything_on_s3(services) -> None:  # noqa: ANN001
    tmp, env = services
    work = os.path.join(tmp, "work")  # the driver's working directory: nothing may be written under it
    os.makedirs(work)
    base = f"s3://{BUCKET}/run"
    overrides = [
        f"data.root={base}/data",
        f"compute.out_dir={base}/out",
        f"tracking.artifact_location={base}/mlartifacts",
        "tracking.experiment=cluster",
        "students.names=[S1,S2]",
        "students.methods=[oskt,scratch,kdpp]",
        "students.scenarios=[synth_a->synth_a]",
        "compute.device=cpu",
        "compute.cpus_per_task=1",
    ]
    params = os.path.join(tmp, "params.yaml")
    init = [sys.executable, "-m", "oskt", "config", "init", "--profile", "smoke", "-o", params]
    subprocess.run([*init, *[a for o in overrides for a in ("--set", o)]], env=env, cwd=work, check=True)
    cmd = [sys.executable, "-m", "oskt", "run", "--orchestrator", "prefect", "--params", params]
    r = subprocess.run(
        [*cmd, "--ray-address", env["RAY_ADDRESS"]], env=env, cwd=work, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert os.listdir(work) == []  # outputs, MLflow artifacts, data: all on S3

    from oskt import io
    from oskt.config import load_config
    from oskt.pipeline.graph import jobs_from_config

    cfg = load_config(params=params)
    cells = jobs_from_config(cfg).cells
    assert len(cells) == 6
    nodes = set()
    for cell in cells:
        rec = json.loads(io.read_bytes(f"{base}/out/students/{cell.label}/result.json").decode())
        assert rec["key"] == cell.key
        nodes.add(rec["extra"]["node"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id], "tags.`oskt.kind` = 'cell'", max_results=100)
    tags = {x.data.tags["oskt.node"] for x in runs if x.info.status == "FINISHED"}
    assert len(tags) >= 2 and tags == nodes  # cells were seen on more than one node
    assert all(x.info.artifact_uri.startswith(f"{base}/mlartifacts/") for x in runs)
    md = io.read_bytes(f"{base}/out/report/report.md").decode()
    for name in ("OSKT", "Scratch", "KD++"):
        assert f"| {name} |" in md
