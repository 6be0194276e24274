"""Seeding, device selection, thread counts, reproducible mode and AMP: what every command and stage process sets up.

:func:`configure_process` is the one call a process makes right after loading its config (``oskt.cli.common.
config_from_args`` for every command; the pipeline's stage entry). It chooses torch's intra-op thread count and, with
``compute.deterministic``, switches on the reproducible mode. Why a thread policy at all: torch's default is one
OpenMP thread per core, and every parallel region waits for all of its threads; when another process takes a core,
the thread sharing it is descheduled for whole time slices while the other spins, so the quick teacher fell from
151 to 7 images/s under load on 2 cores. With no more threads than free CPUs it kept 0.61 of the idle rate next to
one competing process on a quiet host, and 5-8x torch's default on a host busy with other work (BENCHMARKS.md
``contention``, ``bench/contention.py``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from oskt.errors import ConfigError

if TYPE_CHECKING:
    from oskt.config import ComputeConfig

log = logging.getLogger(__name__)

DETERMINISTIC_ENV: dict[str, str] = {
    "MKL_CBWR": "AVX2,STRICT",  # MKL BLAS: the AVX2 code path on every x86 host; STRICT = bitwise CNR mode
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN convolutions: no AVX-512 / AMX kernels even where the CPU has them
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's own vectorised kernels (reductions, elementwise, BN)
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # required by torch's deterministic mode for cuBLAS on CUDA
}
"""What ``compute.deterministic`` pins (a variable already set in the environment wins). AVX2 is the widest ISA
every x86-64 server of the last decade has (Intel Haswell+, AMD Zen); hosts without AVX2 fall back to their own."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` / ``cuda:N`` / ``mps`` without that device is an
    error naming ``compute.device``, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"compute.device={name!r} but no CUDA device is available; use 'auto' or 'cpu'")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"compute.device={name!r} but this host has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("compute.device='mps' but MPS is not available here; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"compute.device={name!r} is not a torch device: {e}") from None


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (0 = leave torch's default); returns the count in force."""
    if n > 0:
        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------ CPU discovery


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs granted by this process's cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when
    unlimited or unknown. The paths are arguments for tests."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: "quota period" or "max period"
            files = [(f"{root}{path}/cpu.max", None)]
        elif "cpu" in controllers.split(","):
            files = [
                (f"{base}/cpu.cfs_quota_us", f"{base}/cpu.cfs_period_us")
                for base in (f"{root}/{controllers}{path}", f"{root}/cpu{path}")
            ]
        else:
            continue
        for quota_file, period_file in files:
            try:
                with open(quota_file) as f:
                    fields = f.read().split()
                if period_file is None:
                    quota, period = fields[0], fields[1]
                else:
                    with open(period_file) as f:
                        quota, period = fields[0], f.read().split()[0]
                if quota == "max" or int(quota) <= 0:
                    return None
                return int(quota) / int(period)
            except (OSError, IndexError, ValueError, ZeroDivisionError):
                continue
    return None


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (a container granted 1.5
    CPUs on a 64-core host gets 2, not torch's 64)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole host from ``/proc/stat`` (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v) - idle) / hz, sum(v) / hz


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def busy_cpus(sample_s: float = 0.1) -> float:
    """CPUs other processes keep busy right now: host CPU time over ``sample_s`` minus this process's own, divided
    by the wall time (0.0 where ``/proc/stat`` is missing). The 1-minute load average lags a minute behind."""
    a, own0, t0 = _cpu_times(), _own_cpu(), time.monotonic()
    if a is None:
        return 0.0
    time.sleep(sample_s)
    b, own1, t1 = _cpu_times(), _own_cpu(), time.monotonic()
    if b is None or t1 <= t0:
        return 0.0
    return max(0.0, ((b[0] - a[0]) - (own1 - own0)) / (t1 - t0))


# ------------------------------------------------------------------------------------------------ process setup


@dataclass(frozen=True)
class ProcessSetup:
    """What :func:`configure_process` chose.

    Attributes:
        threads: torch intra-op threads now in force.
        usable_cpus: CPUs the process may use (affinity, cgroup quota).
        busy_cpus: CPUs other processes kept busy when it was measured (0.0 when not measured).
        deterministic: whether the reproducible mode is on.
        pinned: environment variables the reproducible mode set (empty otherwise).
    """

    threads: int
    usable_cpus: int
    busy_cpus: float
    deterministic: bool
    pinned: dict[str, str] = field(default_factory=dict)


def _passive_wait() -> bool:
    """Whether OpenMP threads sleep instead of spinning at barriers (``OMP_WAIT_POLICY=PASSIVE`` exported before
    the process started: libgomp reads it when torch loads, so setting it later changes nothing)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def choose_threads(num_threads: int, deterministic: bool = False, sample_s: float = 0.1) -> tuple[int, int, float]:
    """``(threads, usable, busy)``: the thread count for this process.

    ``num_threads`` when > 0; otherwise the usable CPUs minus those other processes keep busy (at least 1), or all
    usable CPUs when ``OMP_WAIT_POLICY=PASSIVE`` was exported (sleeping threads do not stall each other;
    bench/contention.py measured it best under heavy load but at ~0.7 of the spinning idle rate, so it is not the
    default). The reproducible mode never adapts to the load or the host (the thread count changes the summation
    order of CPU kernels, hence the figures): without ``num_threads`` it runs 1 thread, the one count every host
    has and one that no competing process can stall.
    """
    usable = usable_cpus()
    if num_threads > 0:
        return num_threads, usable, 0.0
    if deterministic:
        return 1, usable, 0.0
    if usable == 1:
        return 1, usable, 0.0
    if _passive_wait():  # waiting threads sleep: all of them can run, each gets its share of a contended host
        return usable, usable, 0.0
    busy = busy_cpus(sample_s)
    return max(1, usable - round(busy)), usable, busy


def _pin_deterministic() -> dict[str, str]:
    """Set the reproducible mode's torch flags and library variables; check that ATen's kernels follow them."""
    pinned = {}
    for k, v in DETERMINISTIC_ENV.items():
        if k not in os.environ:
            os.environ[k] = v
            pinned[k] = v
    torch.use_deterministic_algorithms(True, warn_only=True)  # a CUDA op without a deterministic kernel warns
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    rank = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
    want = os.environ["ATEN_CPU_CAPABILITY"].upper()
    have = torch.backends.cpu.get_cpu_capability().upper()
    if want in rank and have in rank and rank[have] > rank[want]:
        # ATen fixes its kernels at the first tensor operation: this process ran one before the config loaded
        raise ConfigError(
            f"compute.deterministic=true must take effect before the first torch operation, but this process "
            f"already runs {have} kernels: call oskt.runtime.configure_process first, or export "
            + " ".join(f"{k}={v}" for k, v in DETERMINISTIC_ENV.items())
            + " before starting it"
        )
    return pinned


def configure_process(compute: ComputeConfig, sample_s: float = 0.1) -> ProcessSetup:
    """Apply ``compute.num_threads`` / ``compute.deterministic`` to this process (idempotent).

    Call it once, right after the config is loaded and before any tensor work: the CLI does it in
    ``config_from_args``; a pipeline stage process at its entry. Threads: ``compute.num_threads`` when > 0, else
    the usable CPUs minus the busy ones, measured over ``sample_s`` (``bench/contention.py`` chose this over torch's
    default and over a passive OpenMP wait policy, which must be set before torch loads and cost a third of the
    idle rate). An explicit count also goes to ``OMP_NUM_THREADS`` for child processes; an automatic one does
    not (a child measures the load when it starts).

    Args:
        compute: the ``compute`` section.
        sample_s: how long to sample the host's CPU use (only when the count is automatic).

    Returns:
        A :class:`ProcessSetup`.

    Raises:
        ConfigError: the reproducible mode was asked for after this process ran torch kernels.
    """
    pinned = _pin_deterministic() if compute.deterministic else {}
    threads, usable, busy = choose_threads(compute.num_threads, compute.deterministic, sample_s)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if compute.num_threads > 0:  # children that start torch (loader workers) follow an explicit count only
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if busy >= 0.5:
        log.debug("%.1f of %d CPUs busy with other work: %d torch thread(s)", busy, usable, threads)
    return ProcessSetup(threads, usable, busy, compute.deterministic, pinned)


class ThreadTuner:
    """Re-chooses an automatic thread count from the CPU use since its previous call, without sleeping: a process
    that started on an idle host and then meets competing work stops spinning two threads on one free core.

    Use it as an epoch callback (``callback(epoch, record)``, ``oskt.train`` entry points' ``callbacks``) or call
    :meth:`retune` between units of work. A no-op with an explicit ``compute.num_threads`` or in the reproducible
    mode (their counts never change).
    """

    def __init__(self, compute: ComputeConfig) -> None:
        self.active = compute.num_threads == 0 and not compute.deterministic and not _passive_wait()
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        host = _cpu_times()
        return None if host is None else (host[0], _own_cpu(), time.monotonic())

    def retune(self) -> int:
        """Set and return the thread count for the CPU use since the previous call (or construction)."""
        now = self._sample()
        if not self.active or now is None or self._last is None or now[2] - self._last[2] < 0.5:
            return torch.get_num_threads()
        busy = max(0.0, ((now[0] - self._last[0]) - (now[1] - self._last[1])) / (now[2] - self._last[2]))
        self._last = now
        threads = max(1, usable_cpus() - round(busy))
        if threads != torch.get_num_threads():
            log.debug("%.1f CPUs busy with other work: %d torch thread(s)", busy, threads)
            torch.set_num_threads(threads)
        return threads

    def __call__(self, epoch: int, record: dict) -> None:
        self.retune()


def autocast(device: torch.device, enabled: bool = True) -> AbstractContextManager:
    """Mixed precision on CUDA (fp16 autocast); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
