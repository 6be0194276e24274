"""What an evaluation leaves behind: the metrics table, ``metrics.json``, the per-query CSV, ranked-result
pictures, and the same logged through a :class:`~oskt.tracking.Tracker` (MLflow when the CLI plugs it in)."""

from __future__ import annotations

import csv
import io as _io
import math
from dataclasses import dataclass, field
from typing import Any

from oskt import io
from oskt.eval.features import EvalResult
from oskt.tracking import Tracker

__all__ = ["EvalFiles", "format_table", "log_evaluation", "per_query_csv", "write_evaluation"]

PER_QUERY_COLUMNS = (
    "index",
    "path",
    "pid",
    "camid",
    "num_matches",
    "ap",
    "inp",
    "first_match_rank",
    "top1_pid",
    "top1_distance",
)
"""Columns of ``per_query.csv``; ``ap`` / ``inp`` / ``first_match_rank`` are empty for a skipped query (no true
match in the gallery), ``top1_*`` when no top-k list was kept."""


@dataclass(frozen=True)
class EvalFiles:
    """Paths written by :func:`write_evaluation` (``None`` / empty when not asked for)."""

    metrics: str
    per_query: str
    worst: str | None = None
    visrank: list[str] = field(default_factory=list)


def format_table(result: EvalResult) -> str:
    """The metrics as a small table in percent (what ``oskt eval`` prints)."""
    m = result.metrics
    head = f"{'mAP':>7} {'mINP':>7} {'rank-1':>7} {'rank-5':>7} {'rank-10':>7}"
    vals = " ".join(f"{100 * v:7.2f}" for v in (m.mAP, m.mINP, m.rank1, m.rank5, m.rank10))
    tail = f"{m.num_valid} valid queries" + (f", {m.num_skipped} without a true match skipped" if m.num_skipped else "")
    return f"{head}\n{vals}\n({tail}; {len(result.gallery)} gallery images)"


def _num(x: float, fmt: str = "{:.6f}") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def per_query_csv(result: EvalResult) -> str:
    """The per-query table (:data:`PER_QUERY_COLUMNS`) as CSV text, one row per query in query order."""
    q = result.queries
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_QUERY_COLUMNS)
    has_top = q.topk_index.shape[1] > 0
    for i, r in enumerate(result.query):
        top = int(q.topk_index[i, 0]) if has_top else -1
        w.writerow(
            [
                i,
                r.path,
                r.pid,
                r.camid,
                int(q.num_matches[i]),
                _num(float(q.ap[i])),
                _num(float(q.inp[i])),
                int(q.first_hit[i]) if q.first_hit[i] > 0 else "",
                result.gallery[top].pid if top >= 0 else "",
                _num(float(q.topk_distance[i, 0])) if top >= 0 else "",
            ]
        )
    return buf.getvalue()


def write_evaluation(
    result: EvalResult,
    out_dir: str,
    *,
    info: dict[str, Any] | None = None,
    visrank: int = 0,
    visrank_max: int | None = None,
    worst: int = 8,
) -> EvalFiles:
    """Write ``metrics.json`` (metrics as fractions + protocol + ``info``), ``per_query.csv`` and, with
    ``visrank`` > 0, ``visrank/<index>_<name>.png`` per query plus ``worst.png`` (the ``worst`` lowest-AP
    queries); every file atomically.

    Args:
        result: the evaluation (with ``topk >= visrank`` when pictures are asked for).
        out_dir: folder (local or ``s3://``).
        info: more entries for ``metrics.json`` (checkpoint, data set, ...).
        visrank: gallery images per picture (0 = no pictures).
        visrank_max: pictures for at most this many queries (None = every query).
        worst: queries in ``worst.png``.
    """
    from oskt.eval.visrank import save_png, worst_queries, worst_queries_grid, write_visrank

    io.makedirs(out_dir)
    payload = {
        **(info or {}),
        **result.metrics.to_dict(),
        "protocol": result.settings,
        "num_query": len(result.query),
        "num_gallery": len(result.gallery),
        "seconds": round(result.seconds, 3),
    }
    metrics_path = io.join(out_dir, "metrics.json")
    per_query_path = io.join(out_dir, "per_query.csv")
    io.write_json_atomic(metrics_path, payload)
    io.write_text_atomic(per_query_path, per_query_csv(result))
    worst_path, pictures = None, []
    if visrank > 0:
        pictures = write_visrank(result, io.join(out_dir, "visrank"), visrank, visrank_max)
        if worst_queries(result, 1):
            worst_path = save_png(worst_queries_grid(result, worst, visrank), io.join(out_dir, "worst.png"))
    return EvalFiles(metrics=metrics_path, per_query=per_query_path, worst=worst_path, visrank=pictures)


def log_evaluation(
    tracker: Tracker, result: EvalResult, files: EvalFiles, params: dict[str, Any] | None = None
) -> None:
    """Log the evaluation: params (protocol + ``params``), the headline metrics as ``eval/<name>``, and the files
    (``metrics.json``, ``per_query.csv``, ``worst.png``, the pictures under ``visrank/``)."""
    tracker.log_params({**{f"eval.{k}": v for k, v in result.settings.items()}, **(params or {})})
    m = result.metrics
    tracker.log_metrics({**m.scalars("eval/"), "eval/num_valid": float(m.num_valid)})
    tracker.log_artifact(files.metrics)
    tracker.log_artifact(files.per_query)
    if files.worst:
        tracker.log_artifact(files.worst)
    for p in files.visrank:
        tracker.log_artifact(p, "visrank")
