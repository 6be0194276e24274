"""The cost of the reproducible mode (``compute.deterministic``, issue #19) on the quick teacher's training
throughput, in one run.

Same proxy and worker processes as ``bench/contention.py`` (training steps of the quick teacher r32-2-4-8 at 64x32,
batch 32, real loss and optimisers; images/s), no competing processes. Compared, interleaved over rounds:

    normal:1         compute.num_threads=1, the host's own kernels (AVX-512 / AMX where the CPU has them)
    deterministic:1  compute.deterministic=true with its default of 1 thread: deterministic algorithms, MKL / oneDNN /
                     ATen pinned to AVX2 (``oskt.runtime.DETERMINISTIC_ENV``)
    normal           oskt's default setup (threads from the free CPUs)
    deterministic:N  the reproducible mode with every usable CPU (full run only)

Figures: ``ratio_kernels`` = deterministic:1 / normal:1 (the price of the pinned kernels at an equal thread count)
and ``ratio_default`` = deterministic:1 / normal (what switching the mode on costs a default run).

    python bench/deterministic.py --quick    # < 1 min
    python bench/deterministic.py

Last line: ``deterministic: ratio_kernels=<x> (goal >= 0.7)``; figures in bench/results/deterministic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.contention import Worker  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s (< 1 min on 2 cores)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2 quick, 5 full)")
    ap.add_argument("--seconds", type=float, default=None, help="timed window per figure (default 2 quick, 4 full)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "deterministic.json"))
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    names = {"normal:1": "oskt:1", "deterministic:1": "deterministic", "normal": "oskt"}
    if not args.quick and usable > 1:
        names[f"deterministic:{usable}"] = f"deterministic:{usable}"
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    workers = {label: Worker(policy) for label, policy in names.items()}
    runs: dict[str, list[float]] = {label: [] for label in names}
    threads: dict[str, list[int]] = {label: [] for label in names}
    try:
        for w in workers.values():
            w.wait_ready()
        labels = list(names)
        for r in range(rounds):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                res = workers[label].run(seconds)
                runs[label].append(res["images_per_s"])
                threads[label].append(res["threads"])
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()))
    finally:
        for w in workers.values():
            w.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio_kernels = med["deterministic:1"] / med["normal:1"]
    ratio_default = med["deterministic:1"] / med["normal"]
    out: dict[str, Any] = {
        "model": next(iter(workers.values())).info.get("model"),
        "batch": 32,
        "input": [64, 32],
        "usable_cpus": usable,
        "loadavg_before": load_before,
        "rounds": rounds,
        "seconds_per_figure": seconds,
        "quick": args.quick,
        "images_per_s": med,
        "runs": runs,
        "threads": threads,
        "ratio_kernels": ratio_kernels,
        "ratio_default": ratio_default,
        "wall_s": time.perf_counter() - t_start,
    }
    if f"deterministic:{usable}" in med:
        out["ratio_all_cpus"] = med[f"deterministic:{usable}"] / med["normal"]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for k, v in med.items():
        print(f"{k:18s} threads {statistics.median(threads[k])}: {v:.1f} images/s")
    print(f"ratio_default (deterministic:1 / normal) = {ratio_default:.3f}")
    print(f"deterministic: ratio_kernels={ratio_kernels:.3f} (goal >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
