"""What the test-time protocols do to trained students (issue #20): every method's student of ``make run`` (one
student, seed 0, both scenarios) evaluated by the real ``oskt eval`` command four times — plain, ``--flip``,
``--rerank`` (k-reciprocal, k1=20, k2=6, λ=0.3) and both — on its target's test split.

Not a timing: the figures are mAP / Rank-1 of checkpoints already trained; this script runs the CLI (one process per
evaluation, as a user would) and collects each ``metrics.json``. The plain run is also checked against the mAP the
pipeline recorded for the cell (``result.json``): the command and the pipeline evaluate the same way.

    python bench/eval_protocols.py                       # S1 of outputs/ (make run)
    python bench/eval_protocols.py --student S3 --out-dir outputs --quick   # --quick: OSKT and WTSel only

Last line: ``eval_protocols: oskt_rerank_gain=<mAP points> (recorded, no goal)``; figures in
bench/results/eval_protocols.json, the table printed as Markdown (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oskt.io import write_text_atomic  # noqa: E402

VARIANTS = {"plain": [], "flip": ["--flip"], "rerank": ["--rerank"], "flip+rerank": ["--flip", "--rerank"]}
NAMES = {"oskt": "OSKT", "scratch": "Scratch", "wtsel": "WTSel", "kdpp": "KD++", "depgraph": "DepGraph"}
NAMES.update(ofa="OFA-KD", rsd="RSD")


def cells(out_dir: Path, student: str, methods: list[str] | None) -> list[tuple[str, str, str, Path]]:
    """(scenario, method, target data set, cell folder) of every finished seed-0 cell of ``student``."""
    found = []
    for d in sorted((out_dir / "students").glob(f"*__{student}__*__seed0__fs1")):
        scenario, _, method, _, _ = d.name.split("__")
        if (methods and method not in methods) or not (d / "result.json").exists():
            continue
        found.append((scenario, method, scenario.split("--")[1], d))
    return found


def evaluate(ckpt: Path, data: str, opts: list[str], out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "oskt", "eval", "--checkpoint", str(ckpt), "--data", data, *opts, "--no-track"]
    r = subprocess.run([*cmd, "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"eval_protocols: {' '.join(cmd)} failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {k: float(m[k]) for k in ("mAP", "rank1", "mINP")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="outputs", help="the pipeline's compute.out_dir")
    ap.add_argument("--student", default="S1")
    ap.add_argument("--quick", action="store_true", help="OSKT and WTSel only")
    ap.add_argument("--record", default=str(ROOT / "bench" / "results" / "eval_protocols.json"))
    args = ap.parse_args(argv)
    out_dir = (ROOT / args.out_dir).resolve()
    todo = cells(out_dir, args.student, ["oskt", "wtsel"] if args.quick else None)
    if not todo:
        print(f"eval_protocols: no finished {args.student} seed-0 cell under {out_dir}/students: run `make run` first")
        return 2
    rows = []
    for scenario, method, data, d in todo:
        ckpt = d / "finetune" / "student.pt"
        got = {v: evaluate(ckpt, data, o, out_dir / "eval_protocols" / d.name / v) for v, o in VARIANTS.items()}
        recorded = json.loads((d / "result.json").read_text())["metrics"].get("mAP")
        rows.append({"scenario": scenario, "method": method, "pipeline_mAP": recorded, **got})
        print(f"{scenario} {method}: " + ", ".join(f"{v} {100 * m['mAP']:.1f}" for v, m in got.items()), flush=True)
    print()
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        print(f"**{scenario.replace('--', ' → ')}**, {args.student}, seed 0: mAP / Rank-1 in %\n")
        print("| Method | " + " | ".join(VARIANTS) + " |")
        print("|---|" + "---|" * len(VARIANTS))
        for r in (r for r in rows if r["scenario"] == scenario):
            cells_ = [f"{100 * r[v]['mAP']:.1f} / {100 * r[v]['rank1']:.1f}" for v in VARIANTS]
            print(f"| {NAMES.get(r['method'], r['method'])} | " + " | ".join(cells_) + " |")
        print()
    oskt = [r for r in rows if r["method"] == "oskt"]
    gain = sum(100 * (r["flip+rerank"]["mAP"] - r["plain"]["mAP"]) for r in oskt) / max(1, len(oskt))
    worst = max(abs(r["plain"]["mAP"] - r["pipeline_mAP"]) for r in rows if r["pipeline_mAP"] is not None)
    record = {"out_dir": args.out_dir, "student": args.student, "seed": 0, "rows": rows, "oskt_rerank_gain": gain}
    record["max_plain_vs_pipeline_mAP_diff"] = worst
    write_text_atomic(args.record, json.dumps(record, indent=1) + "\n")
    print(f"plain `oskt eval` vs the pipeline's recorded mAP: largest difference {worst:.2e}")
    print(f"eval_protocols: oskt_rerank_gain={gain:.2f} (recorded, no goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
