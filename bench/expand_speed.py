"""Benchmark: generating students by expansion vs DepGraph pruning vs a plain parameter copy (SPEC.md §3).

For the full-size ResNet-50 teacher (random weights) and its chains 8/16/32, and for ViT-S with its chain 120,
time generating every student by

* expansion: ``expand_state_dict`` (row stacking / column summing / averaging into the student's state dict) with
  the per-student index tensors and the chain's column prefix sums precomputed (``cold`` = the first call, which
  computes them), also filling a pre-built student (vs ``load_state_dict``) and building a new module (``expand``),
* DepGraph (torch-pruning, ``prune_to_spec``) pruning the same teacher to the same widths,
* a plain copy of a pre-built student's state dict (``{k: v.clone()}``, the memory-bound floor),

and record the peak resident memory of each phase (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
Chain building (clustering) is not part of expansion and is timed separately; ``--quick`` uses random cluster
assignments (allocation only depends on cluster sizes) to stay under a minute.

Goals: expansion ≥ 100× faster than DepGraph and ≤ 3× the copy. Figures go to ``bench/results/expand_speed.json``.
Usage: ``python bench/expand_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from oskt.baselines.depgraph import prune_to_spec
from oskt.chain import build_chain, expand, expand_state_dict
from oskt.models import ModelSpec, build_model, parse_spec, select_chain

NUM_CLASSES = 751


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall time in ms over ``repeats`` (after one warm-up) and the peak RSS growth in MiB."""
    fn()
    _reset_peak()
    base = _status("VmRSS")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
        del out
    peak = max(_status("VmHWM") - base, 0) / 2**20
    return statistics.median(times), peak


def bench_family(teacher_spec: ModelSpec, widths: list[int], students: list[ModelSpec], quick: bool) -> list[dict]:
    teacher = build_model(teacher_spec, NUM_CLASSES).eval()
    t = time.perf_counter()
    init = "random" if quick else "center"
    chains = {w: build_chain(teacher, w, init=init) for w in widths}
    print(f"{teacher_spec.arch}: chains {widths} built ({init}) in {time.perf_counter() - t:.1f}s")
    rows = []
    for spec in students:
        w = select_chain(spec, widths, teacher_spec)
        chain = chains[w]
        reps = 3 if quick else 7
        with torch.no_grad():
            chain.__dict__.pop("_alloc_cache", None)
            chain.__dict__.pop("_prefix_cache", None)
            t = time.perf_counter()
            expand_state_dict(chain, spec)  # cold: allocation + the chain's prefix cache
            cold_ms = (time.perf_counter() - t) * 1e3
            exp_ms, exp_mb = measure(lambda chain=chain, spec=spec: expand_state_dict(chain, spec), reps)
            built = build_model(spec, NUM_CLASSES)
            sd = built.state_dict()
            copy_ms, copy_mb = measure(lambda sd=sd: {k: v.clone() for k, v in sd.items()}, reps)

            def into(chain=chain, spec=spec, built=built) -> None:  # model level: fill a pre-built student
                built.backbone.load_state_dict(expand_state_dict(chain, spec))
                built.reset_classifier(NUM_CLASSES)

            model_ms, _ = measure(into, reps)
            load_ms, _ = measure(lambda built=built, sd=sd: built.load_state_dict(sd), reps)
            full_ms, _ = measure(lambda chain=chain, spec=spec: expand(chain, spec, NUM_CLASSES), reps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg_ms, dg_mb = measure(lambda spec=spec: prune_to_spec(teacher, spec), 1 if quick else 2)
        row = {
            "arch": teacher_spec.arch,
            "student": spec.name,
            "chain": w,
            "expand_ms": exp_ms,
            "expand_cold_ms": cold_ms,
            "expand_into_model_ms": model_ms,
            "expand_build_model_ms": full_ms,
            "depgraph_ms": dg_ms,
            "copy_ms": copy_ms,
            "load_state_dict_ms": load_ms,
            "speedup_vs_depgraph": dg_ms / exp_ms,
            "ratio_vs_copy": exp_ms / copy_ms,
            "model_ratio_vs_load_state_dict": model_ms / load_ms,
            "peak_mib": {"expand": exp_mb, "depgraph": dg_mb, "copy": copy_mb},
        }
        rows.append(row)
        print(
            f"  {spec.name:>6} chain {w:>3}: expand {exp_ms:7.2f} ms (cold {cold_ms:6.1f}, into model "
            f"{model_ms:6.2f}, new module {full_ms:6.1f}) | DepGraph {dg_ms:7.1f} ms | copy {copy_ms:6.2f} ms "
            f"(load_state_dict {load_ms:5.2f}) | {row['speedup_vs_depgraph']:6.1f}x DepGraph, "
            f"{row['ratio_vs_copy']:4.2f}x copy | peak MiB exp/dg/copy {exp_mb:.0f}/{dg_mb:.0f}/{copy_mb:.0f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="random cluster assignments, fewer repeats (< 1 min)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "expand_speed.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    resnet = [parse_spec(n) for n in ("S1", "S2", "S3", "S4", "S5", "S6")]
    rows = bench_family(parse_spec("T"), [8, 16, 32], resnet, args.quick)
    vit = [parse_spec(n, "vit_small", drop_path=0.0) for n in ("S1", "S2")]
    rows += bench_family(parse_spec("T", "vit_small", drop_path=0.0), [120], vit, args.quick)
    speedup = min(r["speedup_vs_depgraph"] for r in rows)
    copy_ratio = max(r["ratio_vs_copy"] for r in rows)
    summary = {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t0,
        "min_speedup_vs_depgraph": speedup,
        "max_ratio_vs_copy": copy_ratio,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.out} ({summary['seconds']:.0f}s)")
    print(f"expand_speed: ratio_vs_copy={copy_ratio:.2f} (max over students, goal <= 3)")
    print(f"expand_speed: speedup_vs_depgraph={speedup:.1f} (goal >= 100)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
