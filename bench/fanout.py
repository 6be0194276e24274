"""Student-grid fan-out: 4 real fine-tunes on a local Ray (2 CPUs, 1 CPU per cell) versus serially in one process,
plus the orchestration overhead per grid cell of the production path (Prefect flow on prefect-ray + MLflow).

The cells are real grid cells (Scratch-initialised S1 students, seeds 0-3: the one method that reads no upstream job,
so no teacher or chain is needed) on a small embedded synthetic data set, executed by ``oskt.pipeline.grid.run_grid``
exactly as in the pipeline, through each engine in turn.

Measured in one run, on the same cells (each side first runs a throwaway cell, so first-call costs such as imports
and data set parsing are not timed):

* ``serial``: the serial engine in this process with one torch thread, i.e. exactly the per-cell work of a Ray cell;
  the full run also times torch's default thread count (intra-op parallelism instead of fan-out), reported as
  ``serial_default_threads_s``;
* ``ray``: plain Ray tasks (``num_cpus=1`` each, torch threads = 1) on ``ray.init(num_cpus=2)``; start-up and the
  warm-up cells are reported separately as ``ray_cold_start_s``;
* ``stack``: the same grid through Prefect (temporary server, started outside the timing) → RayTaskRunner →
  MLflow (SQLite), i.e. what ``python -m flows stage students`` runs; overhead per cell = (stack − ray) / cells.

    python bench/fanout.py            # 4 cells, longer fine-tunes
    python bench/fanout.py --quick    # < 1 min

Last line: ``fanout: speedup=<serial/ray> (goal >= 1.7)``; figures go to ``bench/results/fanout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------------------------ bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter fine-tunes (< 1 min in all)")
    p.add_argument("--cells", type=int, default=4)
    p.add_argument("--no-stack", action="store_true", help="skip the Prefect + MLflow overhead measurement")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    for k, v in {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }.items():
        os.environ.setdefault(k, v)
    sys.path.insert(0, os.path.dirname(HERE))

    import ray
    import torch

    from flows.engines import prefect_api_url, prefect_engine, ray_engine, ray_init_kwargs
    from oskt.config import load_config, with_overrides
    from oskt.data import make_synthetic
    from oskt.pipeline.graph import jobs_from_config
    from oskt.pipeline.grid import run_grid, serial
    from oskt.pipeline.records import Paths, TrackingTarget

    tmp = tempfile.mkdtemp(prefix="oskt-fanout-")
    epochs, iters = (2, 12) if args.quick else (6, 50)  # full: 300 steps per cell
    seeds = "[" + ",".join(str(i) for i in range(args.cells)) + "]"
    cfg = load_config(
        profile="smoke",
        overrides=[
            f"data.root={tmp}/data",
            f"compute.out_dir={tmp}/out",
            "compute.device=cpu",
            "compute.cpus_per_task=1",
            "compute.ray_num_cpus=2",
            "students.names=[S1]",
            "students.methods=[scratch]",
            "students.scenarios=[synth_a->synth_a]",
            f"students.seeds={seeds}",
            f"students.epochs={epochs}",
            "students.milestones=[]",
            f"train.max_iters_per_epoch={iters}",
            "data.synthetic.train_ids=16",
            "data.synthetic.test_ids=8",
            "data.height=64",
            "data.width=32",
            f"tracking.uri=sqlite:///{tmp}/mlruns.db",
        ],
    )
    make_synthetic(os.path.join(tmp, "data", "synth_a"), cfg.data.synthetic, "a")
    cells = jobs_from_config(cfg).cells
    warm = jobs_from_config(with_overrides(cfg, ["students.seeds=[100,101]"])).cells
    default_threads = torch.get_num_threads()
    try:
        # serial, in this process, one thread per cell as on Ray (identical work per cell); first-call costs
        # (imports, allocator, data set parsing) are paid by a throwaway cell before each timing, on both sides
        torch.set_num_threads(1)
        run_grid(cells[:1], Paths(f"{tmp}/warm"), engine=serial)
        t0 = time.perf_counter()
        serial1 = run_grid(cells, Paths(f"{tmp}/serial1"), engine=serial)
        serial1_s = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
        serial_s, serial_res = float("nan"), []
        if not args.quick:  # torch's default threads: intra-op parallelism instead of fan-out
            t0 = time.perf_counter()
            serial_res = run_grid(cells, Paths(f"{tmp}/serial"), engine=serial)
            serial_s = time.perf_counter() - t0

        # plain Ray, 2 CPUs, 1 CPU per cell, workers warmed up by a throwaway cell each
        t0 = time.perf_counter()
        ray.init(**ray_init_kwargs(cfg.compute, None))
        run_grid(cells[:2], Paths(f"{tmp}/warm-ray"), engine=ray_engine(cfg.compute), threads=1)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fanned = run_grid(cells, Paths(f"{tmp}/ray"), engine=ray_engine(cfg.compute), threads=1)
        ray_s = time.perf_counter() - t0

        stack_s = float("nan")
        if not args.no_stack:  # Prefect flow -> RayTaskRunner (same Ray) -> MLflow, as the pipeline runs it
            from oskt.pipeline.tracking import ensure_experiment, target_from_config

            prefect_api_url()  # start the temporary Prefect server outside the timing (a real team runs a server)
            target: TrackingTarget = target_from_config(cfg, parent_run_id="")
            ensure_experiment(target)
            # warm-up grid: this path's workers (their runtime env differs), the MLflow database, the flow registration
            engine = prefect_engine(cfg.compute)
            run_grid(warm, Paths(f"{tmp}/warm-stack"), engine=engine, target=target, threads=1)
            t0 = time.perf_counter()
            run_grid(cells, Paths(f"{tmp}/stack"), engine=engine, target=target, threads=1)
            stack_s = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    speedup = serial1_s / ray_s
    overhead = (stack_s - ray_s) / len(cells)
    result = {
        "cells": len(cells),
        "quick": args.quick,
        "epochs": epochs,
        "iters_per_epoch": iters,
        "serial_s": round(serial1_s, 2),
        "serial_threads": 1,
        "serial_default_threads_s": round(serial_s, 2),
        "default_threads": default_threads,
        "speedup_vs_serial_default_threads": round(serial_s / ray_s, 3),
        "serial_cell_s": [round(r.seconds, 2) for r in serial1],
        "serial_default_threads_cell_s": [round(r.seconds, 2) for r in serial_res],
        "ray_cell_s": [round(r.seconds, 2) for r in fanned],
        "ray_s": round(ray_s, 2),
        "ray_num_cpus": 2,
        "ray_cpus_per_cell": 1,
        "ray_cold_start_s": round(cold_s, 2),
        "speedup": round(speedup, 3),
        "goal": 1.7,
        "stack_s": round(stack_s, 2),
        "overhead_per_cell_s": round(overhead, 3),
        "overhead_definition": "(Prefect+RayTaskRunner+MLflow grid wall - plain Ray grid wall) / cells",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fanout.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"fanout: overhead_per_cell={overhead:.2f}s (Prefect + Ray + MLflow vs plain Ray)")
    print(f"fanout: speedup={speedup:.2f} (goal >= 1.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
