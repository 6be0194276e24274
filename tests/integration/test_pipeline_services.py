"""Preflight (one clear OsktError before any training) and a real `mlflow server` on 127.0.0.1 used through the
tracker; the server is started in its own process group and the whole group is stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.servers import wait_healthy

pytest.importorskip("mlflow")

from oskt.cli import main as oskt_main  # noqa: E402
from oskt.config import load_config  # noqa: E402
from oskt.pipeline.preflight import PreflightError, preflight  # noqa: E402
from oskt.pipeline.records import TrackingTarget  # noqa: E402

pytestmark = pytest.mark.pipeline


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def no_training(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A working directory of its own; the tests assert that nothing was written there (preflight stops first)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)


def test_unreachable_tracking_server_is_one_clear_error_before_training(no_training: str, capsys) -> None:  # noqa: ANN001
    url = f"http://127.0.0.1:{_free_port()}"
    args = ["--profile", "smoke", "--set", f"tracking.uri={url}", "--set", f"compute.out_dir={no_training}/out"]
    assert oskt_main(["stage", "prepare", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oskt: error: MLflow tracking server") and url in err[0]
    assert not os.path.exists(os.path.join(no_training, "out"))
    # the environment variable wins over the config, and `oskt run` checks before calling DVC
    os.environ["MLFLOW_TRACKING_URI"] = url
    try:
        assert oskt_main(["run", "--profile", "smoke"]) == 2
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    assert "unreachable" in capsys.readouterr().err


def test_missing_s3_credentials_is_one_clear_error_before_training(no_training: str, monkeypatch) -> None:  # noqa: ANN001
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.path.join(no_training, "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", os.path.join(no_training, "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = load_config(
        profile="smoke", overrides=["data.root=s3://oskt-data/reid", f"tracking.uri=sqlite:///{no_training}/m.db"]
    )
    with pytest.raises(PreflightError, match=r"S3 credentials are missing for s3://oskt-data/reid.*AWS_ACCESS_KEY_ID"):
        preflight(cfg)
    from flows.pipeline import oskt_pipeline  # the Prefect flow checks first too (before any task runs)

    with pytest.raises(PreflightError, match="S3 credentials are missing"):
        oskt_pipeline.fn(
            params=None,
            profile="smoke",
            overrides=["compute.out_dir=s3://oskt-data/out", f"tracking.uri=sqlite:///{no_training}/m.db"],
        )


def test_tracker_logs_to_a_real_mlflow_server(tmp_path) -> None:
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri + "/health", 90, "mlflow server")
        cfg = load_config(profile="smoke", overrides=[f"tracking.uri={uri}"])
        preflight(cfg)  # reachable: no error
        from oskt.pipeline.tracking import search_runs, start_run

        target = TrackingTarget(uri=uri, experiment="server-test")
        parent = start_run(target, "parent")
        with start_run(target, "child", {"method": "oskt"}, parent_run_id=parent.run_id) as child:
            child.log_params({"a.b": 1})
            for step in range(30):
                child.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
            (tmp_path / "note.txt").write_text("hi")
            child.log_artifact(str(tmp_path / "note.txt"), "notes")
        parent.close()
        (run,) = search_runs(target, "tags.method = 'oskt'")
        assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.info.status == "FINISHED"
        from mlflow.tracking import MlflowClient

        assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "loss")) == 30
        assert (tmp_path / "artifacts").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
