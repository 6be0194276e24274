"""The process setup every command and stage gets (``oskt.runtime.configure_process``): a thread count from the CPUs
the process may really use (issue #17, under load) and the reproducible mode ``compute.deterministic`` (issue #19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oskt import runtime

# ------------------------------------------------------------------------------------------------ CPU discovery


def _cgroup(tmp: Path, line: str, files: dict[str, str]) -> float | None:
    tmp.mkdir()
    (tmp / "cgroup").write_text(line + "\n")
    for rel, text in files.items():
        p = tmp / "fs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return runtime.cgroup_cpu_limit(str(tmp / "cgroup"), str(tmp / "fs"))


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    assert _cgroup(tmp_path / "a", "0::/job", {"job/cpu.max": "150000 100000\n"}) == 1.5
    assert _cgroup(tmp_path / "b", "0::/job", {"job/cpu.max": "max 100000\n"}) is None
    v1 = {"cpu,cpuacct/job/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "c", "4:cpu,cpuacct:/job", v1) == 2.0
    unlimited = {"cpu,cpuacct/job/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path / "d", "4:cpu,cpuacct:/job", unlimited) is None
    assert _cgroup(tmp_path / "e", "4:memory:/job", {}) is None
    assert runtime.cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_usable_cpus_follow_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    n = runtime.usable_cpus()
    assert 1 <= n <= (os.cpu_count() or 1)
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 0.5)
    assert runtime.usable_cpus() == 1  # half a CPU still runs one thread
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1.5)
    assert runtime.usable_cpus() == min(n, 2)


@pytest.mark.parametrize(
    ("num_threads", "deterministic", "busy", "want"),
    [
        (0, False, 0.0, 4),  # idle: every usable CPU
        (0, False, 1.2, 3),  # one busy neighbour: leave its CPU to it
        (0, False, 2.6, 1),
        (0, False, 9.0, 1),  # never fewer than one
        (2, False, 3.0, 2),  # an explicit count wins
        (0, True, 0.0, 1),  # reproducible mode: the same count on every host and under any load
        (3, True, 0.0, 3),
    ],
)
def test_choose_threads(
    monkeypatch: pytest.MonkeyPatch, num_threads: int, deterministic: bool, busy: float, want: int
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    monkeypatch.setattr(runtime, "busy_cpus", lambda sample_s=0.1: busy)
    assert runtime.choose_threads(num_threads, deterministic)[0] == want


def test_passive_wait_policy_takes_every_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    monkeypatch.setattr(runtime, "busy_cpus", lambda sample_s=0.1: 2.6)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert runtime.choose_threads(0)[0] == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")  # exported before start: threads sleep instead of spinning
    assert runtime.choose_threads(0)[0] == 4 and runtime.choose_threads(0, deterministic=True)[0] == 1


def test_busy_cpus_sees_a_busy_neighbour() -> None:
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        assert runtime.busy_cpus(0.5) >= 0.5  # the spinning process holds about one CPU (others may add more)
    finally:
        spin.kill()
        spin.wait()


# ------------------------------------------------------------------------------------------------ through the CLI

PROBE = """
import argparse, json, os, sys, torch
from oskt.cli.common import config_from_args
a = argparse.Namespace(params=None, profile="smoke", overrides=sys.argv[1:])
config_from_args(a)
print(json.dumps({
    "threads": torch.get_num_threads(),
    "deterministic": torch.are_deterministic_algorithms_enabled(),
    "cudnn": [torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark],
    "capability": torch.backends.cpu.get_cpu_capability(),
    "env": {k: os.environ.get(k) for k in ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
}))
"""


def _probe(*overrides: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *overrides],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _host_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def test_cli_sets_up_the_reproducible_mode_before_any_kernel() -> None:
    got = _probe("compute.deterministic=true")
    assert got["deterministic"] and got["cudnn"] == [True, False] and got["threads"] == 1
    assert got["env"] == {"MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    if _host_capability() in ("AVX2", "AVX512"):
        assert got["capability"] == "AVX2"  # set after `import torch`, yet ATen follows it
    plain = _probe("compute.num_threads=1")
    assert not plain["deterministic"] and plain["capability"] == _host_capability() and plain["threads"] == 1
    assert plain["env"]["MKL_CBWR"] is None


def test_user_exported_pins_win() -> None:
    got = _probe("compute.deterministic=true", env={"MKL_CBWR": "COMPATIBLE"})
    assert got["env"]["MKL_CBWR"] == "COMPATIBLE" and got["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


STEP = """
import os, sys, torch
late = sys.argv[1] == "late"
if late:
    import argparse
    from oskt.cli.common import config_from_args
    config_from_args(argparse.Namespace(params=None, profile="smoke", overrides=["compute.deterministic=true"]))
else:
    torch.set_num_threads(1)
from oskt.models import ModelSpec, build_model
torch.manual_seed(0)
m = build_model(ModelSpec(in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32)), 10).train()
out = m(torch.randn(8, 3, 64, 32))
(out.logits.logsumexp(1).mean() + out.feat.pow(2).mean()).backward()
g = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
torch.save(g, sys.argv[2])
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="needs a host above AVX2")
def test_pins_set_late_equal_pins_exported_before_start(tmp_path: Path) -> None:
    """The reproducible mode set by the CLI after torch is imported computes exactly what a process started with
    the variables exported computes (so no re-exec is needed), and differs from this AVX-512 host's own kernels."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.DETERMINISTIC_ENV}

    def grads(mode: str, extra: dict[str, str]) -> torch.Tensor:
        path = tmp_path / f"{mode}-{len(extra)}.pt"
        r = subprocess.run(
            [sys.executable, "-c", STEP, mode, str(path)], env={**env, **extra}, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return torch.load(path)

    late = grads("late", {})
    exported = grads("plain", dict(runtime.DETERMINISTIC_ENV))
    native = grads("plain", {})
    assert torch.equal(late, exported)
    assert not torch.equal(late, native)  # the pins change which kernels run: they take effect


def test_reproducible_mode_refuses_to_start_after_kernels_ran() -> None:
    if _host_capability() != "AVX512":
        pytest.skip("ATen already runs AVX2 (or less) kernels here: nothing to detect")
    code = (
        "import torch\n"
        "torch.ones(64).sum()\n"  # ATen picks its kernels here
        "from oskt.config import ComputeConfig\n"
        "from oskt.errors import ConfigError\n"
        "from oskt.runtime import configure_process\n"
        "try:\n"
        "    configure_process(ComputeConfig(deterministic=True))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in runtime.DETERMINISTIC_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "compute.deterministic=true must take effect before the first torch operation" in out.stdout
    assert "already runs AVX512 kernels" in out.stdout


def test_thread_tuner_follows_the_load_since_its_last_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from oskt.config import ComputeConfig

    clock = {"host": 0.0, "own": 0.0, "t": 0.0}
    monkeypatch.setattr(runtime, "_cpu_times", lambda: (clock["host"], 100.0))
    monkeypatch.setattr(runtime, "_own_cpu", lambda: clock["own"])
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    n = torch.get_num_threads()
    try:
        tuner = runtime.ThreadTuner(ComputeConfig())
        clock.update(host=20.0, own=18.0, t=5.0)  # 4 CPUs busy for 5 s, 3.6 of them ours: 0.4 others -> 4 threads
        assert tuner.retune() == 4 == torch.get_num_threads()
        clock.update(host=40.0, own=28.0, t=10.0)  # 20 CPU-s in 5 s, 10 ours: 2 others -> 2 threads
        assert tuner.retune() == 2 == torch.get_num_threads()
        clock.update(t=10.2)  # too soon to tell: unchanged
        tuner(epoch=1, record={})
        assert torch.get_num_threads() == 2
        fixed = runtime.ThreadTuner(ComputeConfig(num_threads=3))
        clock.update(host=60.0, own=28.0, t=15.0)
        assert fixed.retune() == 2  # an explicit count is never retuned (nor the reproducible mode's)
        assert not runtime.ThreadTuner(ComputeConfig(deterministic=True)).active
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize(("user", "expected"), [(None, 120), ("45", 45)])
def test_prefects_temporary_server_gets_time_to_start_on_a_busy_host(user: str | None, expected: int) -> None:
    """The grid stage failed on a loaded 2-core host with "Timed out while attempting to connect to ephemeral
    Prefect API server" (Prefect allows 20 s); the pipeline's processes allow 120 s unless the user set a value."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if user is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = user
    code = (
        "from flows.engines import no_telemetry; no_telemetry(); "
        "from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(Path(__file__).resolve().parents[2]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) == expected
