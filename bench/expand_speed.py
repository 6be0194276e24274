"""Benchmark: generating students by expansion vs DepGraph pruning vs a plain parameter copy (SPEC.md §3).

For the full-size ResNet-50 teacher (random weights) and its chains 8/16/32, and for ViT-S with its chain 120,
time generating every student by

* expansion: ``Expander(chain).state_dict(spec)`` (row stacking / column summing / averaging into the student's
  backbone state dict) with the Expander's chain cache (float64 within-cluster column prefix sums and the
  S-Student's column sums, built once per chain like the clustering) and the student's plan (index tensors, built
  once per student shape) warm: a deployed service holds one ``Expander`` per chain and expands many students from
  it. This is the goal's figure (``expand_ms``). Also recorded: ``first_ms`` (a fresh Expander's first call, what
  the functions ``expand`` / ``expand_state_dict`` cost: chain cache + allocation + plan), ``plan_ms`` (a new
  student shape on a warm chain cache: allocation + plan), the per-layer reference implementation it is tested
  against bitwise (``reference_ms``, ``oskt.chain.reference``: no cache, timed apart with fewer repeats), filling
  a pre-built student (vs ``load_state_dict``) and building a new module (``Expander.expand``);
* DepGraph (torch-pruning, ``prune_to_spec``) pruning the same teacher to the same widths; every call deep-copies
  the teacher, traces it and builds its dependency graph (the real cost of pruning one student: the graph is
  tied to the model it prunes), then prunes;
* a plain copy of the same tensors expansion returns: ``{k: v.clone()}`` over a pre-built student's *backbone*
  state dict (the memory floor of producing the student's parameters; the head is not produced by
  ``expand_state_dict``, so it is not copied either) and, for reference, one flat ``clone`` of as many bytes.

Expansion and the copies are timed round-robin (each repeat runs every method once) so that the machine's
load affects them alike; ``ratio_vs_copy`` is the median of the per-round ratios. Every timing runs with the
garbage collector paused (``gc_paused``). Memory, from one extra call
each: ``peak_mib``, the peak of what torch allocates during the call, outputs included (``torch.profiler`` memory
events); ``rss_growth_mib``, the growth of the peak resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``; 0 when the allocator reuses memory it holds); ``held_mib``, what expansion keeps
between calls (``Expander.held_bytes``: the chain cache, the student's plan). Chain building
(clustering) is not part of expansion and is timed separately; ``--quick`` uses random cluster assignments
(allocation only depends on cluster sizes) and fewer repeats to stay under a minute.

Goals: expansion (caches warm) ≥ 100× faster than DepGraph and ≤ 3× the copy. The torch thread count is set
explicitly (``--threads``, default 2); ``--cpu-time --threads 1`` times CPU time instead of wall time (a loaded,
shared machine: with 2 threads, a descheduled worker thread stalls every op). Figures go to
``bench/results/expand_speed.json``, with the load average.
Usage: ``python bench/expand_speed.py [--quick] [--threads N] [--cpu-time]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from oskt.baselines.depgraph import prune_to_spec
from oskt.chain import Expander, build_chain, expand_state_dict
from oskt.chain.reference import expand_state_dict_reference
from oskt.models import ModelSpec, build_model, parse_spec, select_chain

NUM_CLASSES = 751
CLOCK = time.perf_counter  # ``--cpu-time``: time.thread_time (the calling thread's CPU time)


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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector collected once, then paused, as ``timeit`` does: a collection landing
    inside a call (after DepGraph's deep copy and tracing it takes ≈ 300 ms of the ≈ 300–950 ms a pruning call
    otherwise measures) is noise of the process, not the cost of the method. Collecting before every call instead
    would evict the CPU caches each time (it walks every Python object)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _timed(fn: Callable[[], Any]) -> float:
    """Wall time (ms) of one call."""
    t = CLOCK()
    out = fn()
    ms = (CLOCK() - t) * 1e3
    del out
    return ms


def measure(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall time in ms over ``repeats`` (after one warm-up; ``gc_paused`` for each) and the peak RSS growth
    in MiB."""
    fn()
    _reset_peak()
    base = _status("VmRSS")
    times = []
    for _ in range(repeats):
        with gc_paused():
            times.append(_timed(fn))
    peak = max(_status("VmHWM") - base, 0) / 2**20
    return statistics.median(times), peak


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak RSS growth (MiB) of one call."""
    _reset_peak()
    base = _status("VmRSS")
    out = fn()
    del out
    return max(_status("VmHWM") - base, 0) / 2**20


def torch_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak of the memory torch allocates (MiB) during one call, outputs included: the running sum of every op's
    own allocations and frees (``torch.profiler``, ``profile_memory``) in time order. Unlike the RSS growth it
    does not depend on whether the allocator reuses memory it already holds."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    cur = best = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        best = max(best, cur)
    return best / 2**20


def _bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same keys in the same order and the same bits (the full-size check of ``tests/unit/test_expand_plan.py``)."""

    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])

    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_robin(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Wall times (ms) of every function, each repeat running all of them once (after one warm-up round), and the
    median number of minor page faults per call (first touches of memory the allocator got fresh from the OS:
    1.5-2 us each on the 2-core VM, so they can dominate a copy of tens of MiB)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    with gc_paused():
        for _ in range(repeats):
            for k, fn in fns.items():
                f = _minor_faults()
                times[k].append(_timed(fn))
                faults[k].append(_minor_faults() - f)
    return times, {k: int(statistics.median(v)) for k, v in faults.items()}


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
        reps = 5 if quick else 21
        with torch.no_grad():
            t = CLOCK()
            expand_state_dict(chain, spec)  # a short-lived Expander: chain cache + allocation + plan
            first_ms = (CLOCK() - t) * 1e3
            expander = Expander(chain)  # what a service holds
            expander.state_dict(spec)
            plan_times = []
            for _ in range(1 if quick else 3):
                expander.clear(plans_only=True)
                t = CLOCK()
                expander.state_dict(spec)  # allocation + plan (chain cache warm)
                plan_times.append((CLOCK() - t) * 1e3)
            sd = build_model(spec, NUM_CLASSES).backbone.state_dict()
            nbytes = sum(v.numel() * v.element_size() for v in sd.values())
            flat = torch.empty(nbytes, dtype=torch.uint8)
            times, faults = round_robin(
                {
                    "expand": lambda ex=expander, spec=spec: ex.state_dict(spec),
                    "copy": lambda sd=sd: {k: v.clone() for k, v in sd.items()},
                    "flat_copy": lambda flat=flat: flat.clone(),
                },
                reps,
            )
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = statistics.median(e / c for e, c in zip(times["expand"], times["copy"], strict=True))
            plan_ms = statistics.median(plan_times) - med["expand"]
            t = CLOCK()
            ref = expand_state_dict_reference(chain, spec)  # the test oracle: no cache, slow
            ref_ms = (CLOCK() - t) * 1e3
            if not quick:
                ref_ms, _ = measure(lambda chain=chain, spec=spec: expand_state_dict_reference(chain, spec), 3)
            matches = _bitwise_equal(expander.state_dict(spec), ref)
            del ref
            exp_mb = peak_mib(lambda ex=expander, spec=spec: ex.state_dict(spec))
            copy_mb = peak_mib(lambda sd=sd: {k: v.clone() for k, v in sd.items()})
            exp_torch = torch_peak_mib(lambda ex=expander, spec=spec: ex.state_dict(spec))
            copy_torch = torch_peak_mib(lambda sd=sd: {k: v.clone() for k, v in sd.items()})
            held = expander.held_bytes(spec)
            cache_mib, plan_mib = held["chain_cache"] / 2**20, held["student_plans"] / 2**20
            built = build_model(spec, NUM_CLASSES)

            def into(ex=expander, spec=spec, built=built) -> None:  # model level: fill a pre-built student
                built.backbone.load_state_dict(ex.state_dict(spec))
                built.reset_classifier(NUM_CLASSES)

            full_sd = built.state_dict()
            mreps = 3 if quick else 7
            model_ms, _ = measure(into, mreps)
            load_ms, _ = measure(lambda built=built, sd=full_sd: built.load_state_dict(sd), mreps)
            full_ms, _ = measure(lambda ex=expander, spec=spec: ex.expand(spec, NUM_CLASSES), mreps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg_ms, dg_mb = measure(lambda spec=spec: prune_to_spec(teacher, spec), 1 if quick else 3)
            dg_torch = torch_peak_mib(lambda spec=spec: prune_to_spec(teacher, spec))
        exp_ms = med["expand"]
        row = {
            "arch": teacher_spec.arch,
            "student": spec.name,
            "chain": w,
            "student_mib": nbytes / 2**20,
            "expand_ms": exp_ms,
            "first_ms": first_ms,
            "plan_ms": plan_ms,
            "reference_ms": ref_ms,
            "matches_reference": matches,
            "expand_into_model_ms": model_ms,
            "expand_build_model_ms": full_ms,
            "depgraph_ms": dg_ms,
            "copy_ms": med["copy"],
            "flat_copy_ms": med["flat_copy"],
            "load_state_dict_ms": load_ms,
            "speedup_vs_depgraph": dg_ms / exp_ms,
            "ratio_vs_copy": ratio,
            "ratio_vs_flat_copy": exp_ms / med["flat_copy"],
            "model_ratio_vs_load_state_dict": model_ms / load_ms,
            "peak_mib": {"expand": exp_torch, "depgraph": dg_torch, "copy": copy_torch},
            "rss_growth_mib": {"expand": exp_mb, "depgraph": dg_mb, "copy": copy_mb},
            "held_mib": {"chain_cache": cache_mib, "student_plan": plan_mib},
            "minor_faults": faults,
        }
        rows.append(row)
        print(
            f"  {spec.name:>6} chain {w:>3} ({row['student_mib']:5.1f} MiB): expand {exp_ms:6.2f} ms (first "
            f"{first_ms:6.1f}, plan {plan_ms:6.1f}, reference {ref_ms:6.2f}) | DepGraph {dg_ms:7.1f} ms | "
            f"copy {med['copy']:5.2f} ms (flat {med['flat_copy']:5.2f}) | {row['speedup_vs_depgraph']:6.1f}x DepGraph, "
            f"{ratio:4.2f}x copy"
            f" | into model {model_ms:5.2f} vs load_state_dict {load_ms:5.2f}, new module {full_ms:5.1f}"
            f" | peak MiB exp/dg/copy {exp_torch:.1f}/{dg_torch:.0f}/{copy_torch:.1f} (held: cache {cache_mib:.0f},"
            f" plan {plan_mib:.1f})"
            f" | page faults/call exp/copy {faults['expand']}/{faults['copy']}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="random cluster assignments, fewer repeats (< 1 min)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "expand_speed.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the calling thread's CPU time instead of wall time (with --threads 1: every op runs on that "
        "thread), for a loaded shared machine where other processes' load would otherwise dominate",
    )
    args = parser.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1 (other threads' CPU time is not counted)")
    global CLOCK
    CLOCK = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    resnet = [parse_spec(n) for n in ("S1", "S2", "S3", "S4", "S5", "S6")]
    rows = bench_family(parse_spec("T"), [8, 16, 32], resnet, args.quick)
    vit = [parse_spec(n, "vit_small", drop_path=0.0) for n in ("S1", "S2")]
    rows += bench_family(parse_spec("T", "vit_small", drop_path=0.0), [120], vit, args.quick)
    if not all(r["matches_reference"] for r in rows):
        raise SystemExit("expand_speed: the expansion differs from the reference implementation")
    speedup = min(r["speedup_vs_depgraph"] for r in rows)
    copy_ratio = max(r["ratio_vs_copy"] for r in rows)
    summary = {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "clock": "thread CPU time" if args.cpu_time else "wall",
        "seconds": time.perf_counter() - t0,
        "min_speedup_vs_depgraph": speedup,
        "max_ratio_vs_copy": copy_ratio,
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.out} ({summary['seconds']:.0f}s)")
    print(
        f"expand_speed: threads={torch.get_num_threads()}, {summary['clock']} clock, load {os.getloadavg()[0]:.1f}, "
        "figures for Expander.state_dict with its cache and plan warm"
    )
    print(f"expand_speed: ratio_vs_copy={copy_ratio:.2f} (max over students, goal <= 3)")
    print(f"expand_speed: speedup_vs_depgraph={speedup:.1f} (goal >= 100)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
