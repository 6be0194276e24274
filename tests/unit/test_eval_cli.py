"""``oskt eval`` through the command line (a subprocess): files, printed table, protocol flags, data set by
name or folder, MLflow logging, and one-line errors that write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from oskt.config import DataConfig, EvalConfig
from oskt.data import load_dataset
from oskt.eval import evaluate_dataset
from oskt.models import build_model, load_model, parse_spec, save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    model = build_model(parse_spec("r8-2-4-8", "resnet50", img_size=(32, 16)), 8)
    return save_model(str(tmp_path_factory.mktemp("ckpt") / "s.pt"), model, "student")


def oskt(args: list[str], cwd, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run(
        [sys.executable, "-m", "oskt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def base(checkpoint: str, data: DataConfig, *extra: str) -> list[str]:
    return [
        "eval",
        "--checkpoint",
        checkpoint,
        "--profile",
        "smoke",
        "--set",
        f"data.root={data.root}",
        "--set",
        "compute.num_threads=1",
        *extra,
    ]


@pytest.mark.slow
def test_eval_writes_metrics_csv_pictures(checkpoint: str, tiny_synth: DataConfig, tmp_path) -> None:
    out = tmp_path / "out"
    r = oskt(
        base(checkpoint, tiny_synth, "--data", "synth_a", "--no-track", "--visrank", "3", "-o", str(out)), tmp_path
    )
    assert r.returncode == 0, r.stderr
    payload = json.loads((out / "metrics.json").read_text())
    ds = load_dataset("synth_a", tiny_synth)
    assert payload["num_query"] == len(ds.query) and payload["protocol"]["rerank"] is False
    # the printed table is the file's numbers, in percent
    line = r.stdout.splitlines()[
        r.stdout.splitlines().index(next(s for s in r.stdout.splitlines() if "rank-10" in s)) + 1
    ]
    assert [float(v) for v in line.split()] == pytest.approx(
        [100 * payload[k] for k in ("mAP", "mINP", "rank1", "rank5", "rank10")], abs=0.006
    )
    # the same numbers as the library on the same model and data (smoke profile's eval section, 32x16 input)
    model, _ = load_model(checkpoint)
    lib = evaluate_dataset(model, ds, tiny_synth, EvalConfig(batch_size=64), "resnet", "cpu").metrics
    assert payload["mAP"] == pytest.approx(lib.mAP, abs=1e-6) and payload["cmc"] == pytest.approx(list(lib.cmc))
    rows = (out / "per_query.csv").read_text().splitlines()
    assert rows[0].startswith("index,path,pid,camid") and len(rows) == len(ds.query) + 1
    pictures = sorted(os.listdir(out / "visrank"))
    assert len(pictures) == len(ds.query) and all(p.endswith(".png") for p in pictures)
    assert (out / "worst.png").exists() and not (tmp_path / "mlruns.db").exists()  # --no-track: no MLflow


@pytest.mark.slow
def test_eval_protocol_flags_and_data_folder(checkpoint: str, tiny_synth: DataConfig, tmp_path) -> None:
    out = tmp_path / "out"
    folder = os.path.join(tiny_synth.root, "synth_b")
    flags = ["--rerank", "--flip", "--aqe", "--metric", "euclidean", "--cuhk03-metric", "--set", "eval.rerank_k1=5"]
    r = oskt(base(checkpoint, tiny_synth, "--data", folder, "--no-track", "-o", str(out), *flags), tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((out / "metrics.json").read_text())["protocol"]
    assert p["rerank"] and p["flip"] and p["aqe"] and p["cuhk03_metric"] and p["metric"] == "euclidean"
    assert p["rerank_k1"] == 5 and p["rerank_k2"] == 6
    assert "euclidean, flip, AQE (k=5, alpha=3), re-ranking (k1=5, k2=6, lambda=0.3)" in r.stdout
    assert not (out / "visrank").exists()


@pytest.mark.slow
@pytest.mark.pipeline
def test_eval_logs_to_mlflow(checkpoint: str, tiny_synth: DataConfig, tmp_path) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    r = oskt(
        base(
            checkpoint,
            tiny_synth,
            "--data",
            "synth_a",
            "--visrank",
            "2",
            "-o",
            str(out),
            "--set",
            f"tracking.uri={uri}",
            "--set",
            "tracking.experiment=eval-test",
        ),
        tmp_path,
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    assert r.returncode == 0, r.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["oskt.kind"] == "eval"
    payload = json.loads((out / "metrics.json").read_text())
    assert runs[0].data.metrics["eval/mAP"] == pytest.approx(payload["mAP"])
    assert runs[0].data.params["eval.metric"] == "cosine"
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"metrics.json", "per_query.csv", "worst.png", "visrank"} <= names


def test_eval_errors_are_one_line_and_write_nothing(checkpoint: str, tiny_synth: DataConfig, tmp_path) -> None:
    out = tmp_path / "out"
    r = oskt(base(checkpoint, tiny_synth, "--no-track", "-o", str(out), "--data", "nope"), tmp_path)
    errors = [s for s in r.stderr.splitlines() if s.startswith("oskt: error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert "--data 'nope' is neither a data set name from data.datasets" in errors[0]
    args = ["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", "synth_a", "--profile", "smoke"]
    r = oskt([*args, "--no-track", "-o", str(out)], tmp_path)
    assert r.returncode == 2 and r.stderr.count("oskt: error:") == 1 and "missing.pt" in r.stderr
    assert sorted(os.listdir(tmp_path)) == []  # no output folder, no MLflow database, nothing else


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "eval.metric=l1"], "eval.metric='l1' is not allowed: expected cosine|euclidean"),
        (["--set", "eval.rerank_lambda=2"], "eval.rerank_lambda=2.0 is not allowed: expected a number in [0, 1]"),
        (["--set", "eval.rerank_k2=0"], "eval.rerank_k2=0 is not allowed"),
    ],
)
def test_eval_config_errors_in_process(
    checkpoint: str, tiny_synth: DataConfig, tmp_path, monkeypatch, capsys, extra: list[str], message: str
) -> None:
    # the same CLI entry point in this process (config errors are found before any work; no subprocess needed)
    from oskt.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(base(checkpoint, tiny_synth, "--data", "synth_a", "--no-track", "-o", str(out), *extra)) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("oskt: error:") and message in err[0]
    assert sorted(os.listdir(tmp_path)) == []


def test_readme_documents_the_eval_options() -> None:
    # every option the README's "Evaluating a checkpoint" table names exists on `oskt eval`, and vice versa
    import re
    from pathlib import Path

    from oskt.cli import build_parser

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Evaluating a checkpoint", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `--")]
    documented = {m for line in table for m in re.findall(r"`(--[a-z0-9-]+)", line.split(" | ")[0])}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb").choices["eval"]
    options = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    assert documented <= options
    protocol = {
        "--metric",
        "--flip",
        "--aqe",
        "--rerank",
        "--cuhk03-metric",
        "--visrank",
        "--visrank-max",
        "--no-track",
    }
    assert protocol <= documented
