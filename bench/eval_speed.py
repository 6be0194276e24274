"""Evaluation speed: full mAP / CMC / mINP versus the distance GEMM alone, at Market-1501 size.

Random L2-normalised features (3,368 queries x 15,913 gallery, 2,048-d) with a Market-like id / camera layout:
750 test ids over 6 cameras, about 4.5 queries and 21 gallery images per id, plus 2,798 distractors (pid 0)
and junk-like same-camera gallery images. Both timings are taken in one run, on the same features.

    python bench/eval_speed.py            # Market size
    python bench/eval_speed.py --quick    # a quarter of the queries (< 1 min)

Last line: ``eval_speed: ratio=<value> (goal <= 1.5)``; figures go to ``bench/results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

from oskt.eval.metrics import compute_metrics, l2_normalize


def market_like(num_q: int, num_g: int, dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random features with Market-like labels (750 ids, 6 cameras, distractors pid 0)."""
    rng = np.random.default_rng(seed)
    n_ids, n_cams = 750, 6
    n_distract = int(round(num_g * 2798 / 15913))
    q_pids = np.sort(rng.integers(1, n_ids + 1, num_q))
    q_cams = rng.integers(0, n_cams, num_q)
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, num_g - n_distract), np.zeros(n_distract, dtype=np.int64)])
    g_cams = rng.integers(0, n_cams, num_g)
    qf = rng.standard_normal((num_q, dim), dtype=np.float32)
    gf = rng.standard_normal((num_g, dim), dtype=np.float32)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the queries, one repeat")
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    num_q = args.queries // 4 if args.quick else args.queries
    repeats = 1 if args.quick else args.repeats
    qf, gf, qp, gp, qc, gc = market_like(num_q, args.gallery, args.dim, seed=0)
    qt, gt = torch.from_numpy(qf), torch.from_numpy(gf)

    def gemm_only() -> None:
        # the same normalisation and chunked product the metric code does, nothing else
        qn, gn = l2_normalize(qt), l2_normalize(gt).t().contiguous()
        for s in range(0, num_q, args.chunk):
            _ = qn[s : s + args.chunk] @ gn

    result = {}

    def full() -> None:
        result["m"] = compute_metrics(qt, gt, qp, gp, qc, gc, query_chunk=args.chunk)

    gemm_only()  # warm-up (allocator, BLAS threads)
    t_gemm = best_of(gemm_only, repeats)
    t_full = best_of(full, repeats)
    ratio = t_full / t_gemm
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    m = result["m"]
    figures = {
        "queries": num_q,
        "gallery": args.gallery,
        "dim": args.dim,
        "query_chunk": args.chunk,
        "threads": torch.get_num_threads(),
        "gemm_s": round(t_gemm, 4),
        "full_s": round(t_full, 4),
        "ratio": round(ratio, 3),
        "peak_rss_mb": round(peak_mb, 1),
        "mAP": m.mAP,
        "rank1": m.rank1,
        "num_valid": m.num_valid,
        "quick": args.quick,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "eval_speed.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))
    print(f"eval_speed: ratio={ratio:.3f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
