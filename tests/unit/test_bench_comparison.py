"""bench/comparison.py: report CSVs -> per-column mean mAP of every method and OSKT's margin over the best baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "comparison.py"
HEADER = "scenario,few_shot,method,student,params,macs,n_seeds,mAP_mean,mAP_std,rank1_mean,rank1_std\n"


def _csv(path: Path, rows: list[tuple[str, str, str, str, float]]) -> Path:
    """A report.csv with (scenario, few_shot, method, student, mAP) rows, 3 seeds each."""
    path.write_text(
        HEADER + "".join(f"{sc},{fs},{m},{s},1,1,3,{v:.2f},0.50,{v + 5:.2f},1.00\n" for sc, fs, m, s, v in rows)
    )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_margin_over_the_best_baseline_per_column(tmp_path: Path) -> None:
    quick = _csv(
        tmp_path / "quick.csv",
        [
            ("a->a", "1", "oskt", "S1", 50.0),
            ("a->a", "1", "wtsel", "S1", 40.0),
            ("a->a", "1", "depgraph", "S1", 45.5),
            ("a->a", "1", "oskt[cosine]", "S1", 99.0),  # an ablation row: never the best baseline
            ("a->b", "1", "oskt", "S1", 20.0),
            ("a->b", "1", "scratch", "S1", 30.0),  # a baseline wins this column
        ],
    )
    few = _csv(tmp_path / "few.csv", [("a->b", "0.1", "oskt", "S1", 12.0), ("a->b", "0.1", "rsd", "S1", 2.0)])
    out = tmp_path / "comparison.json"
    res = _run("--report", f"quick={quick}", "--report", f"quick={few}", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "comparison: min_margin=-10.00 (goal > 0)"
    data = json.loads(out.read_text())
    rows = {(r["scenario"], r["few_shot"], r["student"]): r for r in data["rows"]}
    assert set(rows) == {("a->a", 1.0, "S1"), ("a->b", 1.0, "S1"), ("a->b", 0.1, "S1")}
    same = rows[("a->a", 1.0, "S1")]
    assert same["profile"] == "quick"
    assert same["mAP"] == {"oskt": 50.0, "wtsel": 40.0, "depgraph": 45.5}
    assert same["best_baseline"] == "depgraph" and same["margin"] == 4.5
    assert rows[("a->b", 1.0, "S1")]["margin"] == -10.0
    assert rows[("a->b", 0.1, "S1")]["margin"] == 10.0
    assert data["min_margin"] == -10.0 and data["columns_lost"] == 1 and data["columns"] == 3
    assert [r["csv"] for r in data["reports"]] == [str(quick), str(few)]  # outside the repository: as given


def test_the_committed_record_names_the_reports_relative_to_the_repository(tmp_path: Path) -> None:
    out = tmp_path / "comparison.json"
    res = _run("--out", str(out))  # the default reports: docs/results' copies
    assert res.returncode == 0, res.stderr
    shown = [r["csv"] for r in json.loads(out.read_text())["reports"]]
    assert shown and all(c.startswith("docs/results/") and c.endswith("report.csv") for c in shown), shown


def test_missing_report_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "comparison.json"
    res = _run("--report", f"quick_long={tmp_path / 'nope.csv'}", "--out", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("comparison: error: ") and "nope.csv" in lines[0]
    assert "quick_long" in lines[0]
    assert not out.exists()


def test_the_same_column_in_two_reports_is_refused(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", [("a->a", "1", "oskt", "S1", 50.0), ("a->a", "1", "wtsel", "S1", 40.0)])
    b = _csv(tmp_path / "b.csv", [("a->a", "1", "oskt", "S1", 51.0)])
    out = tmp_path / "comparison.json"
    res = _run("--report", f"quick={a}", "--report", f"quick={b}", "--out", str(out))
    assert res.returncode == 2 and "appears in two reports" in res.stderr
    assert not out.exists()


def test_a_column_without_oskt_or_a_foreign_csv_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "comparison.json"
    no_oskt = _csv(tmp_path / "n.csv", [("a->a", "1", "wtsel", "S1", 40.0)])
    res = _run("--report", f"quick={no_oskt}", "--out", str(out))
    assert res.returncode == 2 and "no OSKT entry" in res.stderr
    foreign = tmp_path / "f.csv"
    foreign.write_text("a,b\n1,2\n")
    res = _run("--report", f"quick={foreign}", "--out", str(out))
    assert res.returncode == 2 and "not an oskt report.csv" in res.stderr
    assert not out.exists()
