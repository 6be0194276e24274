"""The method comparison as figures: per profile, scenario, few-shot fraction and student, every method's mean mAP
and OSKT's margin over the best baseline, read from the ``report.csv`` that ``oskt report`` writes into each
output folder (issue #19; the tables and their reading are in docs/results.md).

Not a timing: the figures come from the grids already run (``make results``, ``make results-long`` into
``outputs/long``, ``make results-fewshot`` into ``outputs/fewshot``); this script only reads their reports (by
default the copies docs/results.md shows). A report is
named ``PROFILE=PATH``; the few-shot fractions are the CSV's ``few_shot`` column, so one profile may have several
reports as long as no (scenario, few-shot, student) appears twice.

    python bench/comparison.py            # the three default reports below
    python bench/comparison.py --report quick=outputs/report/report.csv     # a fresh run instead

Ablation rows (``oskt[NAME]``) are left out: the margin is OSKT against the baselines of the same grid. Last line:
``comparison: min_margin=<v> (goal > 0)``; the rows go to bench/results/comparison.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oskt.errors import DataError  # noqa: E402
from oskt.io import write_text_atomic  # noqa: E402

DEFAULT_REPORTS = (
    ("quick", "docs/results/quick7/report.csv"),
    ("quick_long", "docs/results/long/report.csv"),
    ("quick_long", "docs/results/long_s2/report.csv"),
    ("quick_long", "docs/results/long_s3/report.csv"),
    ("quick_long", "docs/results/long_s3_ab/report.csv"),
    ("quick", "docs/results/fewshot/report.csv"),
)
"""The reports docs/results.md shows (copies of ``outputs/report``, ``outputs/long/report`` (S1; S2 in ``long_s2``;
S3 A→A in ``long_s3``, S3 A→B in ``long_s3_ab``, each with teacher and chains retrained on its own host, see
docs/results.md) and ``outputs/fewshot/report`` after ``make results``, ``make results-long`` and
``make results-fewshot``)."""
NEEDED = ("scenario", "few_shot", "method", "student", "n_seeds", "mAP_mean", "mAP_std")


@dataclass(frozen=True)
class Entry:
    """One method's aggregated figure in one column of one report (mAP in %)."""

    profile: str
    scenario: str
    few_shot: float
    student: str
    method: str
    n_seeds: int
    map_mean: float
    map_std: float


def read_report(profile: str, path: Path) -> list[Entry]:
    """The entries of one ``report.csv`` (``oskt.pipeline.reporting.CSV_FIELDS``), ablation rows left out.

    Raises:
        DataError: the file is missing, lacks a column, or holds a value that is not a number.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such report (run the grid and `oskt report` for profile {profile!r} first)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEEDED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not an oskt report.csv, columns {missing} missing (expected {list(NEEDED)})")
        out = []
        for n, row in enumerate(reader, start=2):
            if "[" in row["method"]:  # an ablation row, OSKT (NAME): not a method of the comparison
                continue
            try:
                out.append(
                    Entry(
                        profile,
                        row["scenario"],
                        float(row["few_shot"]),
                        row["student"],
                        row["method"],
                        int(row["n_seeds"]),
                        float(row["mAP_mean"]),
                        float(row["mAP_std"]),
                    )
                )
            except ValueError as e:
                raise DataError(f"{path}:{n}: expected numbers in few_shot / n_seeds / mAP_*, got {row}") from e
    return out


def comparison_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    """One row per (profile, scenario, few-shot, student): every method's mean mAP, the best baseline and OSKT's
    margin over it (OSKT minus the best baseline's mean, mAP points; negative where a baseline wins).

    Raises:
        DataError: a column has no OSKT entry or no baseline, or one method appears twice in a column (two
            reports cover the same cells).
    """
    columns: dict[tuple[str, str, float, str], dict[str, Entry]] = {}
    for e in entries:
        col = columns.setdefault((e.profile, e.scenario, e.few_shot, e.student), {})
        if e.method in col:
            raise DataError(
                f"profile {e.profile!r}, {e.scenario} few-shot {e.few_shot:g} {e.student}: method {e.method!r} "
                "appears in two reports (each column must come from one report)"
            )
        col[e.method] = e
    rows = []
    for (profile, scenario, few_shot, student), col in sorted(columns.items()):
        where = f"profile {profile!r}, {scenario} few-shot {few_shot:g} {student}"
        if "oskt" not in col:
            raise DataError(f"{where}: no OSKT entry (methods found: {sorted(col)})")
        baselines = {m: e for m, e in col.items() if m != "oskt"}
        if not baselines:
            raise DataError(f"{where}: no baseline to compare OSKT with")
        best = max(baselines.values(), key=lambda e: e.map_mean)
        rows.append(
            {
                "profile": profile,
                "scenario": scenario,
                "few_shot": few_shot,
                "student": student,
                "n_seeds": min(e.n_seeds for e in col.values()),
                "mAP": {m: round(e.map_mean, 2) for m, e in col.items()},
                "mAP_std": {m: round(e.map_std, 2) for m, e in col.items()},
                "best_baseline": best.method,
                "margin": round(col["oskt"].map_mean - best.map_mean, 2),
            }
        )
    return rows


def parse_report_arg(text: str) -> tuple[str, Path]:
    """``PROFILE=PATH`` (argparse type)."""
    profile, sep, path = text.partition("=")
    if not sep or not profile or not path:
        raise argparse.ArgumentTypeError(
            f"--report {text!r}: expected PROFILE=PATH, e.g. quick=outputs/report/report.csv"
        )
    return profile, Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the same (reading the reports takes well under a second)")
    ap.add_argument(
        "--report",
        action="append",
        type=parse_report_arg,
        metavar="PROFILE=PATH",
        help="a report.csv and the profile it was made with (repeatable; default: "
        + ", ".join(f"{p}={c}" for p, c in DEFAULT_REPORTS)
        + ")",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "comparison.json"))
    args = ap.parse_args(argv)
    reports = args.report or [(p, ROOT / c) for p, c in DEFAULT_REPORTS]
    try:
        entries = [e for profile, path in reports for e in read_report(profile, path)]
        rows = comparison_rows(entries)
    except DataError as e:
        print(f"comparison: error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        fs = "" if r["few_shot"] == 1.0 else f" fs{r['few_shot']:g}"
        print(
            f"{r['profile']:<10} {r['scenario']:<17}{fs:<6} {r['student']:<4} OSKT {r['mAP']['oskt']:5.1f}  "
            f"best baseline {r['best_baseline']:<8} {r['mAP'][r['best_baseline']]:5.1f}  margin {r['margin']:+6.1f}"
        )
    margins = [r["margin"] for r in rows]
    out = {
        "reports": [{"profile": p, "csv": _shown(c)} for p, c in reports],
        "min_margin": min(margins),
        "columns_lost": sum(m <= 0 for m in margins),
        "columns": len(rows),
        "rows": rows,
    }
    write_text_atomic(args.out, json.dumps(out, indent=1) + "\n")
    print(f"comparison: min_margin={min(margins):.2f} (goal > 0)")
    return 0


def _shown(path: Path) -> str:
    """A report's path as the record shows it: relative to the repository when inside it (the record is committed
    and read on other machines), else as given."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
