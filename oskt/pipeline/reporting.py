"""The comparison report, built from MLflow alone: methods × students per scenario, "mAP/R1" in %, mean ± std
over seeds, as Markdown and CSV, plus accuracy-vs-parameters and accuracy-vs-MACs plots; all logged back to MLflow.

Only runs whose cell and fingerprint match the configured grid count, so stale runs of an older config never leak
into the tables; the newest finished run of each cell wins.
"""

from __future__ import annotations

import csv
import io as _io
import statistics
from collections import defaultdict
from dataclasses import dataclass, replace

from oskt import io
from oskt.config import Config
from oskt.errors import OsktError
from oskt.pipeline.ablation import find_ablations
from oskt.pipeline.grid import cell_fingerprint, grid_cells
from oskt.pipeline.records import GridCell, Paths, ReportRecord, TrackingTarget

METHOD_NAMES = {"oskt": "OSKT", "scratch": "Scratch", "wtsel": "WtSel", "kdpp": "KD++", "depgraph": "DepGraph"}
CSV_FIELDS = (
    "scenario",
    "few_shot",
    "method",
    "student",
    "params",
    "macs",
    "n_seeds",
    "mAP_mean",
    "mAP_std",
    "rank1_mean",
    "rank1_std",
)


class ReportError(OsktError):
    """The report cannot be built (tracking disabled, or no finished cell in MLflow)."""


@dataclass(frozen=True)
class Row:
    """One (scenario, few-shot, method, student) entry aggregated over seeds; accuracies in %."""

    scenario: str
    few_shot: float
    method: str
    student: str
    params: float
    macs: float
    n_seeds: int
    map_mean: float
    map_std: float
    r1_mean: float
    r1_std: float

    def cell_text(self) -> str:
        if self.n_seeds > 1:
            return f"{self.map_mean:.1f}±{self.map_std:.1f}/{self.r1_mean:.1f}±{self.r1_std:.1f}"
        return f"{self.map_mean:.1f}/{self.r1_mean:.1f}"


def collect(cfg: Config, target: TrackingTarget) -> tuple[dict[GridCell, dict[str, float]], list[GridCell]]:
    """Metrics of the newest finished MLflow run of every configured cell, and the cells with no run."""
    from oskt.pipeline.tracking import search_runs

    runs = search_runs(target, "tags.`oskt.kind` = 'cell' and attributes.status = 'FINISHED'")
    newest: dict[tuple[str, str], dict[str, float]] = {}
    for r in runs:  # newest first
        key = (r.data.tags.get("oskt.cell", ""), r.data.tags.get("oskt.fingerprint", ""))
        newest.setdefault(key, dict(r.data.metrics))
    found, missing = {}, []
    for cell in grid_cells(cfg):
        m = newest.get((cell.name, cell_fingerprint(cfg, cell)))
        if m is None:
            missing.append(cell)
        else:
            found[cell] = m
    return found, missing


def _pct(v: float) -> float:
    return 100.0 * v if v <= 1.0 else v  # metrics are fractions; accept percentages too


def aggregate(found: dict[GridCell, dict[str, float]]) -> list[Row]:
    """Mean ± std over seeds of mAP and Rank-1 (in %) per scenario / few-shot / method / student."""
    groups: dict[tuple[str, float, str, str], list[dict[str, float]]] = defaultdict(list)
    for cell, m in found.items():
        groups[(cell.scenario, cell.few_shot, cell.method, cell.student)].append(m)
    rows = []
    for (sc, fs, method, student), ms in groups.items():
        maps = [_pct(m.get("mAP", float("nan"))) for m in ms]
        r1s = [_pct(m.get("rank1", float("nan"))) for m in ms]
        rows.append(
            Row(
                sc,
                fs,
                method,
                student,
                ms[0].get("params", float("nan")),
                ms[0].get("macs", float("nan")),
                len(ms),
                statistics.fmean(maps),
                statistics.pstdev(maps) if len(maps) > 1 else 0.0,
                statistics.fmean(r1s),
                statistics.pstdev(r1s) if len(r1s) > 1 else 0.0,
            )
        )
    return rows


def _fmt_count(n: float, unit: str) -> str:
    if n != n:  # nan
        return "?"
    if unit == "params":
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e9:.2f}G" if n >= 1e8 else f"{n / 1e6:.1f}M"  # MACs: G, or M for the tiny CPU profiles


def method_label(method: str) -> str:
    """Display name: ``OSKT``, ``DepGraph``, ...; an ablation row ``oskt[NAME]`` reads ``OSKT (NAME)``."""
    base, _, variant = method.partition("[")
    name = METHOD_NAMES.get(base, base)
    return f"{name} ({variant.rstrip(']')})" if variant else name


def row_methods(cfg: Config, rows: list[Row]) -> list[str]:
    """The configured methods, then the ablation rows present (``oskt[NAME]``), sorted."""
    return list(cfg.students.methods) + sorted({r.method for r in rows if "[" in r.method})


def to_markdown(cfg: Config, rows: list[Row], missing: list[GridCell], ablations: dict[str, str] | None = None) -> str:
    """Paper layout: one table per scenario (and few-shot fraction), methods × students, "mAP/R1" in %; ablation
    rows (``ablations``: name → its overrides) after the methods."""
    by = {(r.scenario, r.few_shot, r.method, r.student): r for r in rows}
    out = [
        f"# OSKT comparison ({cfg.profile} profile)",
        "",
        "Entries are mAP/Rank-1 in %"
        + (
            " (mean±std over seeds " + ", ".join(map(str, cfg.students.seeds)) + ")"
            if len(cfg.students.seeds) > 1
            else ""
        )
        + ". Columns: student "
        "(parameters, MACs at " + f"{cfg.data.height}×{cfg.data.width}).",
        "",
    ]
    for sc in cfg.students.scenarios:
        for fs in cfg.students.few_shot:
            src, tgt = sc.split("->")
            title = f"## {src} → {tgt}" + (f" (few-shot {fs:g})" if len(cfg.students.few_shot) > 1 or fs < 1 else "")
            heads = []
            for s in cfg.students.names:
                any_row = next((by[k] for k in by if k[0] == sc and k[1] == fs and k[3] == s), None)
                heads.append(
                    f"{s} ({_fmt_count(any_row.params, 'params')}, {_fmt_count(any_row.macs, 'macs')})"
                    if any_row
                    else s
                )
            out += [title, "", "| Method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
            for m in row_methods(cfg, rows):
                vals = [by[(sc, fs, m, s)].cell_text() if (sc, fs, m, s) in by else "—" for s in cfg.students.names]
                out.append(f"| {method_label(m)} | " + " | ".join(vals) + " |")
            out.append("")
    if ablations:
        out += ["Ablations (OSKT rows under changed settings, same teacher and fine-tuning):", ""]
        out += [f"- OSKT ({name}): `{over}`" for name, over in sorted(ablations.items())]
        out.append("")
    if missing:
        out += [f"Missing from MLflow ({len(missing)} cells): " + ", ".join(c.name for c in missing[:20]), ""]
    return "\n".join(out)


def to_csv(rows: list[Row]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in sorted(rows, key=lambda r: (r.scenario, r.few_shot, r.method, r.params)):
        w.writerow(
            [
                r.scenario,
                f"{r.few_shot:g}",
                r.method,
                r.student,
                int(r.params) if r.params == r.params else "",
                int(r.macs) if r.macs == r.macs else "",
                r.n_seeds,
                f"{r.map_mean:.2f}",
                f"{r.map_std:.2f}",
                f"{r.r1_mean:.2f}",
                f"{r.r1_std:.2f}",
            ]
        )
    return buf.getvalue()


def plot(cfg: Config, rows: list[Row], x: str) -> bytes:
    """PNG of mAP (%) vs parameters or MACs, one line per method, one panel per scenario (few-shot 1.0 or the
    first fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = 1.0 if 1.0 in cfg.students.few_shot else cfg.students.few_shot[0]
    scen = list(cfg.students.scenarios)
    fig, axes = plt.subplots(1, len(scen), figsize=(5 * len(scen), 4), squeeze=False)
    for ax, sc in zip(axes[0], scen, strict=True):
        for m in row_methods(cfg, rows):
            pts = sorted(
                (getattr(r, x), r.map_mean) for r in rows if r.scenario == sc and r.method == m and r.few_shot == fs
            )
            if pts:
                scale = 1e6 if x == "params" else 1e9
                ax.plot(
                    [p[0] / scale for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    linestyle="--" if "[" in m else "-",
                    label=method_label(m),
                )
        ax.set_title(sc.replace("->", " → "))
        ax.set_xlabel("parameters (M)" if x == "params" else "MACs (G)")
        ax.set_ylabel("mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def report(cfg: Config, paths: Paths, target: TrackingTarget | None) -> ReportRecord:
    """Query MLflow, write ``report.md``, ``report.csv`` and two plots under ``<out>/report``, log them back."""
    if target is None or not target.enabled:
        raise ReportError("the report is built from MLflow, but tracking is disabled (tracking.enabled=false)")
    found, missing = collect(cfg, target)
    if not found:
        raise ReportError(
            f"no finished grid cell of this config in MLflow experiment {target.experiment!r} at "
            f"{target.uri}: run the student grid first"
        )
    rows = aggregate(found)
    ablations = {}
    for name, acfg in find_ablations(cfg).items():
        a_found, a_missing = collect(acfg, target)
        rows += [replace(r, method=f"{r.method}[{name}]") for r in aggregate(a_found)]
        missing += [replace(c, method=f"{c.method}[{name}]") for c in a_missing]
        diff = {k: v for k, v in acfg.flat().items() if cfg.flat().get(k) != v and not k.startswith("compute.")}
        ablations[name] = ", ".join(f"{k}={v}" for k, v in sorted(diff.items()) if k != "students.methods")
    out = paths.report_dir()
    io.makedirs(out)
    files = {
        "report.md": to_markdown(cfg, rows, missing, ablations).encode(),
        "report.csv": to_csv(rows).encode(),
        "acc_vs_params.png": plot(cfg, rows, "params"),
        "acc_vs_macs.png": plot(cfg, rows, "macs"),
    }
    for name, data in files.items():
        io.write_bytes_atomic(io.join(out, name), data)
    from oskt.pipeline.run import with_data_version
    from oskt.pipeline.tracking import start_run

    with start_run(with_data_version(cfg, target), "report", {"oskt.kind": "report"}) as tracker:
        tracker.log_metrics({"cells_found": len(found), "cells_missing": len(missing)})
        for name in files:
            tracker.log_artifact(io.join(out, name), "report")
        run_id = tracker.run_id
    return ReportRecord(
        out_dir=out,
        markdown=io.join(out, "report.md"),
        csv=io.join(out, "report.csv"),
        plots=(io.join(out, "acc_vs_params.png"), io.join(out, "acc_vs_macs.png")),
        num_runs=len(found),
        run_id=run_id,
    )
