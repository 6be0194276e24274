"""Evaluation speed at Market-1501 size: full mAP / CMC / mINP versus the distance GEMM alone, and k-reciprocal
re-ranking versus the plain evaluation.

Features with a Market-like id / camera layout: 3,368 queries x 15,913 gallery, 2,048-d, 750 test ids over 6
cameras (about 4.5 queries and 21 gallery images per id) plus 2,798 distractors (pid 0). Each identity has a random
centre and every image is its centre plus Gaussian noise (``--noise`` times the centre's scale; distractors are noise
only), which gives a plain mAP near real ResNet-50 features' and neighbourhoods with identity structure, which is
what re-ranking's cost depends on. All timings are taken in one run, on the same features.

    python bench/eval_speed.py            # Market size (re-ranking also at a quarter size, for the memory slope)
    python bench/eval_speed.py --quick    # a quarter of the queries; re-ranking at a quarter of both (< 1 min)

Re-ranking memory: the resident set is sampled every 5 ms during the call; ``rerank_extra_mb`` is its peak above
the resident set just before. From the two sizes of a full run, ``rerank_mb_per_image`` (the slope) and
``rerank_max_images_24gib``, the largest Q + G (same proportions, same feature size) whose peak fits in 24 GiB.

Last line: ``eval_speed: ratio=<value> (goal <= 1.5)``; figures go to ``bench/results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from oskt.config import EvalConfig
from oskt.eval import rank_features
from oskt.eval.metrics import compute_metrics, l2_normalize

GIB24_MB = 24 * 1024


def market_like(num_q: int, num_g: int, dim: int, seed: int, noise: float = 3.0) -> tuple[np.ndarray, ...]:
    """Identity-structured features with Market-like labels (750 ids, 6 cameras, distractors pid 0)."""
    rng = np.random.default_rng(seed)
    n_ids, n_cams = 750, 6
    n_distract = int(round(num_g * 2798 / 15913))
    q_pids = np.sort(rng.integers(1, n_ids + 1, num_q))
    q_cams = rng.integers(0, n_cams, num_q)
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, num_g - n_distract), np.zeros(n_distract, dtype=np.int64)])
    g_cams = rng.integers(0, n_cams, num_g)
    centres = rng.standard_normal((n_ids + 1, dim), dtype=np.float32)
    centres[0] = 0.0  # distractors belong to no identity: noise only
    qf = centres[q_pids] + noise * rng.standard_normal((num_q, dim), dtype=np.float32)
    gf = centres[g_pids] + noise * rng.standard_normal((num_g, dim), dtype=np.float32)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def with_peak_rss(fn: Callable[[], object]) -> tuple[object, float, float, float]:
    """Run ``fn``; returns (its result, seconds, resident MB before, peak resident MB during; 5 ms samples)."""
    before = _rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        t.join()
    return out, seconds, before, max(peak[0], _rss_mb())


def rerank_run(num_q: int, num_g: int, dim: int, chunk: int) -> dict[str, float]:
    """Re-ranked evaluation (features -> re-ranking -> Market rule) with its time and peak memory."""
    qf, gf, qp, gp, qc, gc = market_like(num_q, num_g, dim, seed=1)
    qt, gt = torch.from_numpy(qf), torch.from_numpy(gf)
    cfg = EvalConfig(rerank=True, query_chunk=chunk)
    plain_cfg = EvalConfig(query_chunk=chunk)
    t_plain = best_of(lambda: rank_features(qt, gt, qp, gp, qc, gc, plain_cfg), 2)
    plain = rank_features(qt, gt, qp, gp, qc, gc, plain_cfg).summary()
    res, seconds, before, peak = with_peak_rss(lambda: rank_features(qt, gt, qp, gp, qc, gc, cfg))
    m = res.summary()  # type: ignore[attr-defined]
    return {
        "queries": num_q,
        "gallery": num_g,
        "plain_s": round(t_plain, 3),
        "rerank_s": round(seconds, 3),
        "rerank_ratio": round(seconds / t_plain, 2),
        "rerank_extra_mb": round(peak - before, 1),
        "plain_mAP": round(plain.mAP, 4),
        "rerank_mAP": round(m.mAP, 4),
        "plain_rank1": round(plain.rank1, 4),
        "rerank_rank1": round(m.rank1, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the queries, one repeat")
    p.add_argument("--queries", type=int, default=3368)
    p.add_argument("--gallery", type=int, default=15913)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, default=3.0, help="noise scale relative to the identity centres")
    p.add_argument("--no-rerank", action="store_true", help="skip the re-ranking timings")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    num_q = args.queries // 4 if args.quick else args.queries
    repeats = 1 if args.quick else args.repeats
    qf, gf, qp, gp, qc, gc = market_like(num_q, args.gallery, args.dim, seed=0, noise=args.noise)
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
    figures: dict[str, object] = {
        "queries": num_q,
        "gallery": args.gallery,
        "dim": args.dim,
        "noise": args.noise,
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
    if not args.no_rerank:
        small = rerank_run(args.queries // 4, args.gallery // 4, args.dim, args.chunk)
        figures["rerank_quarter"] = small
        if not args.quick:
            big = rerank_run(args.queries, args.gallery, args.dim, args.chunk)
            figures["rerank"] = big
            n_small, n_big = small["queries"] + small["gallery"], big["queries"] + big["gallery"]
            slope = (big["rerank_extra_mb"] - small["rerank_extra_mb"]) / (n_big - n_small)
            fixed = big["rerank_extra_mb"] - slope * n_big
            figures["rerank_mb_per_image"] = round(slope, 4)
            # the process must hold the features too ((Q + G) x D x 4 bytes, already resident "before" the call),
            # plus the interpreter and torch (about 600 MB here)
            feat_mb = args.dim * 4 / 2**20
            fits = (GIB24_MB - 600 - fixed) / (slope + feat_mb) if slope > 0 else None
            figures["rerank_max_images_24gib"] = int(fits) if fits else None
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "eval_speed.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures, indent=2))
    rr = figures.get("rerank") or figures.get("rerank_quarter")
    if isinstance(rr, dict):
        print(
            f"eval_speed: rerank_ratio={rr['rerank_ratio']} at {rr['queries']} x {rr['gallery']} "
            f"(re-ranked / plain evaluation; no goal), peak +{rr['rerank_extra_mb']:.0f} MB"
        )
    print(f"eval_speed: ratio={ratio:.3f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
