"""``pick --from-mlflow``: fine-tuned students recorded in MLflow (tag method=oskt, metric mAP) as candidates."""

from __future__ import annotations

from pathlib import Path

import pytest

from oskt.deploy.pick import Budget, pick_to_file
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model, load_model, save_model

pytest.importorskip("mlflow")

NARROW = ModelSpec(in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))
WIDE = ModelSpec(in_planes=16, multipliers=(2, 4, 8), img_size=(64, 32))


def _log(client, exp: str, tmp: Path, spec: ModelSpec, method: str, mAP: float) -> str:
    run = client.create_run(exp, tags={"method": method, "student": spec.name})
    ckpt = tmp / f"{run.info.run_id}.pt"
    save_model(str(ckpt), build_model(spec, 3), "student")
    client.log_artifact(run.info.run_id, str(ckpt), "finetune")
    client.log_metric(run.info.run_id, "mAP", mAP)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.mark.slow
@pytest.mark.pipeline
def test_best_fitting_finetuned_student_is_written(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("deploy", artifact_location=str(tmp_path / "artifacts"))
    _log(client, exp, tmp_path, WIDE, "oskt", 0.9)
    narrow = _log(client, exp, tmp_path, NARROW, "oskt", 0.5)
    _log(client, exp, tmp_path, NARROW, "scratch", 0.99)  # another method: ignored
    out = str(tmp_path / "picked.pt")
    res = pick_to_file([], out, Budget(max_params=5e5), from_mlflow=True, mlflow_uri=uri)
    assert res.source == "mlflow" and res.run_id == narrow and res.mAP == pytest.approx(0.5)
    model, ckpt = load_model(out, kind="student")
    assert model.spec == NARROW and ckpt["extra"]["pick"]["run_id"] == narrow
    wide = pick_to_file([], out, Budget(max_params=5e6), from_mlflow=True, mlflow_uri=uri, mlflow_experiment="deploy")
    assert wide.candidate.spec == WIDE and wide.mAP == pytest.approx(0.9)
    with pytest.raises(SpecError, match="no fine-tuned student in MLflow fits"):
        pick_to_file([], out, Budget(max_params=1e5), from_mlflow=True, mlflow_uri=uri)
