"""Kill a fine-tuning run after an epoch, resume it in a fresh process: same final weights, bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

import oskt
from oskt import io

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
from oskt.config import load_config
from oskt.jobs import RunOptions
from oskt.pipeline.graph import finetune_job
from oskt.train import finetune_student

overrides, init, out, kill_after = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])

def killer(epoch, record):
    print(f"ran epoch {epoch}", flush=True)
    if epoch == kill_after:
        os._exit(1)  # as abrupt as a killed worker: no cleanup, no final checkpoint

cfg = load_config(profile="smoke", overrides=overrides)
job = finetune_job(cfg, "synth_a", upstream="init", seed=3)
from oskt.tracking import MemoryTracker
tracker = MemoryTracker()
finetune_student(job, init, out, run=RunOptions(device="cpu"), callbacks=[killer], tracker=tracker)
print("logged epochs", json.dumps(sorted({s for s, m in tracker.metrics if "student/loss" in m})), flush=True)
"""


def _run(overrides: list[str], init: str, out: str, kill_after: int) -> tuple[int, list[int]]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(oskt.__file__)), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(overrides), init, out, str(kill_after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode in (0, 1), r.stderr
    logged = [json.loads(line[len("logged epochs ") :]) for line in r.stdout.splitlines() if line.startswith("logged")]
    _run.logged = logged[-1] if logged else None  # type: ignore[attr-defined]
    return r.returncode, [int(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("ran epoch")]


def test_killed_run_resumes_bit_exact(tmp_path) -> None:  # noqa: ANN001
    from oskt.config import load_config
    from oskt.data import load_dataset, make_synthetic
    from oskt.models import build_model, save_model
    from oskt.models.spec import parse_spec

    overrides = [
        f"data.root={tmp_path}",
        "data.sources=[synth_a]",
        "teacher.name=r8-2-4-8",
        "chain.widths=[4]",
        "students.names=[r4-2-4-8]",
        "students.scenarios=[synth_a->synth_a]",
        "students.epochs=3",
        "train.max_iters_per_epoch=2",
        "train.warmup_epochs=2",
        "compute.device=cpu",
    ]
    cfg = load_config(profile="smoke", overrides=overrides)
    make_synthetic(io.join(str(tmp_path), cfg.data.datasets["synth_a"].path), cfg.data.synthetic, "a")
    torch.manual_seed(0)
    init = str(tmp_path / "init.pt")
    n = load_dataset("synth_a", cfg.data).num_train_pids
    save_model(init, build_model(parse_spec("r4-2-4-8", "resnet50", img_size=(32, 16)), n), "student")

    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert _run(overrides, init, full, -1) == (0, [0, 1, 2])
    assert _run(overrides, init, cut, 0) == (1, [0])  # killed after epoch 1 of 3
    assert os.path.exists(os.path.join(cut, "last.pt")) and not os.path.exists(os.path.join(cut, "student.pt"))
    assert _run(overrides, init, cut, -1) == (0, [1, 2])  # a fresh process resumes from last.pt
    # its tracker (an MLflow run: a new one per attempt) has the whole curve, the restored epoch 1 too
    assert _run.logged == [1, 2, 3]  # type: ignore[attr-defined]
    a = torch.load(os.path.join(full, "student.pt"), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(cut, "student.pt"), weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = io.read_json(os.path.join(full, "history.json")), io.read_json(os.path.join(cut, "history.json"))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    ma, mb = (io.read_json(os.path.join(d, "result.json"))["metrics"] for d in (full, cut))
    assert ma["mAP"] == mb["mAP"] and ma["rank1"] == mb["rank1"]


def test_sigkill_mid_epoch_through_the_cli_resumes_to_the_same_teacher(tmp_path) -> None:  # noqa: ANN001
    """`oskt train teacher` killed with SIGKILL in the middle of an epoch (not at its end): the rerun continues from
    the last finished epoch's last.pt and ends with the weights of an uninterrupted run."""
    import signal
    import time

    from oskt.config import load_config
    from oskt.data import make_synthetic

    root = str(tmp_path / "data")
    sets = [
        "--profile",
        "smoke",
        "--set",
        f"data.root={root}",
        "--set",
        "teacher.epochs=30",
        "--set",
        "train.max_iters_per_epoch=4",
        "--set",
        "compute.device=cpu",
        "--set",
        "compute.num_threads=1",
    ]
    cfg = load_config(profile="smoke", overrides=[f"data.root={root}"])
    make_synthetic(io.join(root, "synth_a"), cfg.data.synthetic, "a")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(oskt.__file__)))

    def train(out: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "oskt", "train", "teacher", "-o", out, *sets],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert train(full).wait(timeout=600) == 0
    proc = train(cut)
    last = os.path.join(cut, "last.pt")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(last) and os.path.getsize(last) > 0):
        time.sleep(0.05)
    mtime = os.path.getmtime(last)
    time.sleep(0.15)  # inside the next epoch (an epoch here takes well over 0.15 s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    from oskt.checkpoint import load_checkpoint

    epoch = load_checkpoint(last, kind="train_state")["extra"]["epoch"]
    assert not os.path.exists(os.path.join(cut, "result.json")) and 0 <= epoch < 29
    rerun = train(cut)
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert f"resuming from {last} after epoch" in out and os.path.getmtime(os.path.join(cut, "teacher.pt")) > mtime
    a = torch.load(os.path.join(full, "teacher.pt"), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(cut, "teacher.pt"), weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not os.path.exists(last)


def test_a_resumed_cell_counts_the_seconds_of_the_attempt_that_was_killed(tmp_path) -> None:  # noqa: ANN001
    """`oskt grid` killed late in a cell's fine-tune, then rerun: the cell's ``seconds`` (the cost figures and the
    progress line read it) is the killed attempt's restored time plus the rerun's, not the rerun's alone."""
    import signal
    import time

    from oskt.checkpoint import load_checkpoint
    from oskt.errors import CheckpointError

    root = str(tmp_path)
    sets = [
        f"data.root={root}/data",
        f"compute.out_dir={root}/out",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
        "students.methods=[scratch]",
        "students.names=[S1]",
        "students.seeds=[0]",
        "students.scenarios=[synth_a->synth_a]",
        "students.epochs=40",
        "compute.device=cpu",
        "compute.num_threads=1",
    ]
    args = ["--profile", "smoke", *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(oskt.__file__)))
    oskt_cli = [sys.executable, "-m", "oskt"]
    subprocess.run([*oskt_cli, "data", "make", "--dataset", "synth_a", *args], env=env, check=True, capture_output=True)
    grid = [*oskt_cli, "grid", "--engine", "serial", *args]
    proc = subprocess.Popen(grid, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = os.path.join(root, "out", "students", "synth_a--synth_a__S1__scratch__seed0__fs1")
    last = os.path.join(cell, "finetune", "last.pt")
    epoch, deadline = -1, time.time() + 300
    while epoch < 34 and time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(CheckpointError):  # not written yet
            epoch = int(load_checkpoint(last, kind="train_state")["extra"]["epoch"])
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the cell finished before it could be killed"
    killed = float(load_checkpoint(last, kind="train_state")["extra"]["seconds"])  # 35+ of 40 epochs
    r = subprocess.run(grid, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    phase = io.read_json(os.path.join(cell, "finetune", "result.json"))
    rec = io.read_json(os.path.join(cell, "result.json"))
    assert phase["seconds"] > killed  # the phase's own figure spans both segments
    assert rec["metrics"]["earlier_seconds"] == pytest.approx(killed)
    assert rec["seconds"] > phase["seconds"]  # the cell: the killed attempt's epochs, the rerun, its evaluation
