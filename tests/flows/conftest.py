"""The real orchestration stack for the flow tests, started once per session: a Prefect test harness (temporary
server + SQLite), a local Ray with 2 CPUs, and a moto S3 server on 127.0.0.1. HOME, PREFECT_HOME and the MLflow store
point at temporary folders (``$HOME/ray_bootstrap_config.yaml`` keeps Ray's dashboard from probing a cloud metadata
address). Training is real (the smoke profile), or a double passed as an argument where a test says so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("prefect")
pytest.importorskip("ray")
pytest.importorskip("mlflow")

BUCKET = "oskt-test"


@dataclass
class Stack:
    """Handles the tests use: the temporary root and the S3 endpoint."""

    root: str
    s3_endpoint: str
    bucket: str = BUCKET


def stack_env(root: str) -> dict[str, str]:
    """Environment for the orchestration stack, all under ``root`` (also used by subprocess tests)."""
    home = os.path.join(root, "home")
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, "ray_bootstrap_config.yaml"), "w") as f:
        f.write("provider:\n  type: local\n")
    return {
        "HOME": home,
        "PREFECT_HOME": os.path.join(home, ".prefect"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # local Ray on 127.0.0.1 only (flows/engines.py LOCAL_RAY_ENV)
        "RAY_DEDUP_LOGS": "0",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = str(tmp_path_factory.mktemp("stack"))
    mp = pytest.MonkeyPatch()
    for k, v in stack_env(root).items():
        mp.setenv(k, v)
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }.items():
        mp.setenv(k, v)
    import boto3

    from tests.servers import forget_s3_clients

    forget_s3_clients()  # an earlier test's S3 server (another endpoint) may have been cached in this process
    boto3.client("s3").create_bucket(Bucket=BUCKET)

    import ray
    from prefect.testing.utilities import prefect_test_harness

    from flows.engines import use_local_ray_env

    with prefect_test_harness(server_startup_timeout=60):
        use_local_ray_env()  # as the pipeline's engines start a local Ray: loopback only
        ray.init("local", num_cpus=2, include_dashboard=False, log_to_driver=True)
        try:
            yield Stack(root=root, s3_endpoint=endpoint)
        finally:
            ray.shutdown()
            moto.stop()
            mp.undo()
            forget_s3_clients()
