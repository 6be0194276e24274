"""Teacher training throughput under CPU contention: idle vs one and two competing busy processes, torch's default
thread setup vs the one every oskt command and stage process gets (``oskt.runtime.configure_process``), in one run.

The "quick teacher" is ``oskt.train.train_teacher`` on the quick profile (ResNet teacher r32-2-4-8 at 64x32, P x K =
8 x 4 = batch 32, fp32 on CPU). The bench times a proxy of it: training steps of that model with the real loss
(``ReIDLoss``: label-smoothed ID + hard triplet + center) and the real optimisers (``build_optimizer`` + the centre
SGD) on one preloaded batch of the input size (the data path is ``bench/train_throughput.py``'s subject; here only
the compute matters). Figure: images/s.

Each policy runs in its own worker process (``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` are read when torch loads its
OpenMP runtime, so they must be set before ``import torch``); workers wait for a command between measurements, so
only one computes at a time. The competing processes are plain Python busy loops started by the bench, pinned to
nothing. Load levels and policies are interleaved over rounds (the machine is shared: drift between rounds hits
every policy alike), each figure is the median over rounds. Before each timed window a worker runs one untimed
step under the new load (full run; a stage lives for minutes, the steady rate matters), then steps until
``--seconds`` have passed (at least 1 step).

Policies (``NAME:N`` = the same with ``compute.num_threads=N``):
    default   torch's own setup: one intra-op thread per core, libgomp's default wait (spin 300k, then sleep).
    oskt      ``configure_process`` called as a process starting under that load would (threads = usable CPUs
              minus the busy ones).
    tuned     ``configure_process`` once, then ``oskt.runtime.ThreadTuner`` re-choosing while it runs (full run).
    passive   ``OMP_WAIT_POLICY=PASSIVE`` exported before torch loads, then ``configure_process`` (which then takes
              every usable CPU; full run).
    one       1 intra-op thread (full run).
    spin:N, cores, deterministic: ``GOMP_SPINCOUNT=N``; usable CPUs set explicitly; the reproducible mode.

Figures: ``ratio_1`` / ``ratio_2`` = oskt with 1 / 2 competing processes over the best idle figure of the run (any
policy; on an idle host torch's default): a host that is busy with other work already makes torch's default
collapse, and a ratio over a collapsed figure would flatter.

    python bench/contention.py --quick     # default vs oskt, 1 round: < 1 min on an idle 2-core machine
    python bench/contention.py             # default, oskt, tuned, passive, one; 3 rounds

Last line: ``contention: ratio_1=<x>, ratio_2=<y> (goal >= 0.4)``; figures in bench/results/contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("default", "oskt", "tuned", "passive", "spin", "cores", "one", "deterministic")
FULL_POLICIES = ("default", "oskt", "tuned", "passive", "one")
QUICK_POLICIES = ("default", "oskt")


# ------------------------------------------------------------------------------------------------ worker


def _worker(policy: str) -> int:
    """Build the quick teacher's training step, then answer ``run SECONDS`` lines with one JSON line each."""
    sys.path.insert(0, str(ROOT))
    policy, _, fixed = policy.partition(":")  # "oskt:1" = oskt's setup with compute.num_threads=1
    if policy == "passive":  # before torch loads libgomp
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if policy == "spin":  # "spin:N": libgomp spins N iterations at a barrier before it sleeps (default 300000)
        os.environ["GOMP_SPINCOUNT"], fixed = fixed, ""
    import torch

    from oskt.config import load_config
    from oskt.models import build_model
    from oskt.models.spec import parse_spec
    from oskt.runtime import ThreadTuner, configure_process, usable_cpus
    from oskt.train import ReIDLoss, build_optimizer

    overrides = ["compute.deterministic=true"] if policy == "deterministic" else []
    cfg = load_config(profile="quick", overrides=[*overrides, *([f"compute.num_threads={fixed}"] if fixed else [])])
    if policy in ("oskt", "deterministic", "tuned", "passive"):
        configure_process(cfg.compute)  # passive: exported before torch loaded, so every usable CPU
    elif policy in ("spin", "cores"):
        torch.set_num_threads(usable_cpus())
    elif policy == "one":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    num_classes = cfg.data.synthetic.train_ids
    spec = parse_spec(
        cfg.teacher.name,
        cfg.teacher.arch,
        last_stride=cfg.teacher.last_stride,
        img_size=(cfg.data.height, cfg.data.width),
    )
    model = build_model(spec, num_classes).train()
    loss = ReIDLoss(cfg.train, num_classes, model.spec.feat_dim)
    opt = build_optimizer(model.named_parameters(), cfg.train)
    copt = torch.optim.SGD(loss.center.parameters(), lr=cfg.train.center_lr) if loss.center is not None else None
    p, k = cfg.train.ids_per_batch, cfg.train.images_per_id
    x = torch.randn(p * k, 3, cfg.data.height, cfg.data.width)
    y = torch.arange(p).repeat_interleave(k)

    def step() -> None:
        total = loss(model(x), y)["total"]
        opt.zero_grad(set_to_none=True)
        if copt is not None:
            copt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if copt is not None:
            for q in loss.center.parameters():
                q.grad.mul_(1.0 / cfg.train.center_weight)  # as the training loop (BoT centre update)
            copt.step()

    for _ in range(2):
        step()
    print(json.dumps({"ready": True, "model": model.spec.name, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        seconds, warm = float(cmd[1]), cmd[2] == "1"
        if policy == "oskt":  # as a stage process starting under this load would choose
            configure_process(cfg.compute)
        tuner = ThreadTuner(cfg.compute) if policy == "tuned" else None  # a process that keeps running
        t_warm = time.perf_counter()
        if warm:
            step()  # untimed: the first step under a new load
        while tuner is not None and time.perf_counter() - t_warm < 0.6:
            step()
        if tuner is not None:
            tuner.retune()
        n, t0 = 0, time.perf_counter()
        while n < 1 or time.perf_counter() - t0 < seconds:
            step()
            n += 1
            if tuner is not None:
                tuner.retune()  # re-chooses at most every 0.5 s, as an epoch callback would
        dt = time.perf_counter() - t0
        rec = {"images_per_s": n * x.shape[0] / dt, "steps": n, "seconds": dt, "threads": torch.get_num_threads()}
        print(json.dumps(rec), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ driver


class Worker:
    def __init__(self, policy: str) -> None:
        self.policy = policy
        drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", policy],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info: dict[str, Any] = {}

    def wait_ready(self) -> None:
        self.info = json.loads(self._readline())

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.policy} died (exit code {self.proc.wait()})")
        return line

    def run(self, seconds: float, warm: bool = True) -> dict[str, Any]:
        self.proc.stdin.write(f"run {seconds} {int(warm)}\n")
        self.proc.stdin.flush()
        return json.loads(self._readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _start_competitors(n: int) -> list[subprocess.Popen]:
    """``n`` pure-Python busy loops (one core each, no affinity)."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="default vs oskt, 1 round, no warm-up steps")
    ap.add_argument("--policies", default=None, help=f"comma-separated subset of {','.join(POLICIES)}")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 1 quick, 3 full)")
    ap.add_argument("--seconds", type=float, default=None, help="timed window per figure (default 2 quick, 4 full)")
    ap.add_argument("--levels", default="0,1,2", help="numbers of competing busy processes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "contention.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    policies = tuple(args.policies.split(",")) if args.policies else (QUICK_POLICIES if args.quick else FULL_POLICIES)
    unknown = sorted({p.partition(":")[0] for p in policies} - set(POLICIES))
    if unknown:
        ap.error(f"unknown policies {unknown}: choose from {list(POLICIES)}")
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    levels = [int(v) for v in args.levels.split(",")]
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    workers = {p: Worker(p) for p in policies}
    try:
        for w in workers.values():
            w.wait_ready()
        runs: dict[str, dict[int, list[float]]] = {p: {n: [] for n in levels} for p in policies}
        threads: dict[str, dict[int, list[int]]] = {p: {n: [] for n in levels} for p in policies}
        for r in range(rounds):
            for n in levels:
                comp = _start_competitors(n)
                try:
                    time.sleep(0.3)  # let the busy loops start spinning
                    order = policies[r % len(policies) :] + policies[: r % len(policies)]
                    for p in order:
                        res = workers[p].run(seconds, warm=not args.quick)
                        runs[p][n].append(res["images_per_s"])
                        threads[p][n].append(res["threads"])
                finally:
                    _stop(comp)
                print(
                    f"round {r + 1}/{rounds}, {n} competing: "
                    + ", ".join(f"{p} {runs[p][n][-1]:.1f}" for p in policies)
                )
    finally:
        for w in workers.values():
            w.close()
    med = {p: {n: statistics.median(v) for n, v in by.items()} for p, by in runs.items()}
    idle = max(by[0] for by in med.values()) if 0 in levels else None
    ratios = {p: {str(n): by[n] / idle for n in levels} for p, by in med.items()} if idle else {}
    out: dict[str, Any] = {
        "model": next(iter(workers.values())).info.get("model"),
        "batch": 32,
        "input": [64, 32],
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "rounds": rounds,
        "seconds_per_figure": seconds,
        "quick": args.quick,
        "images_per_s": {p: {str(n): v for n, v in by.items()} for p, by in med.items()},
        "threads": {p: {str(n): v for n, v in by.items()} for p, by in threads.items()},
        "runs": {p: {str(n): v for n, v in by.items()} for p, by in runs.items()},
        "best_idle_images_per_s": idle,
        "ratio_best_idle": ratios,
        "ratio_own_idle": {p: {str(n): by[n] / by[0] for n in levels} for p, by in med.items()} if idle else {},
        "wall_s": time.perf_counter() - t_start,
    }
    if "oskt" in ratios:
        out["ratio_1"] = ratios["oskt"].get("1")
        out["ratio_2"] = ratios["oskt"].get("2")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for p in policies:
        figs = ", ".join(f"+{n}: {med[p][n]:.1f}" for n in levels)
        used = "/".join(f"{statistics.median(threads[p][n]):g}" for n in levels)
        print(f"{p:10s} threads {used}: images/s {figs}")
    print(f"load average before / after: {load_before[0]:.1f} / {out['loadavg_after'][0]:.1f}")
    if out.get("ratio_1") is not None:
        r2 = f", ratio_2={out['ratio_2']:.3f}" if out.get("ratio_2") is not None else ""
        print(f"contention: ratio_1={out['ratio_1']:.3f}{r2} (goal >= 0.4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
