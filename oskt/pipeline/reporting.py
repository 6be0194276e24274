"""The comparison report, built from MLflow alone: methods × students per scenario, "mAP/R1" in %, mean ± std
over seeds, as Markdown and CSV, plus accuracy-vs-parameters and accuracy-vs-MACs plots; all logged back to MLflow.

Only runs whose cell and key match the configured grid's jobs (``oskt.pipeline.graph.jobs_from_config``) count, so
stale runs of an older config never leak into the tables; the newest finished run of each cell wins. A finished cell
(its ``result.json``) missing from the store (a new ``tracking.uri``) is logged there first.
"""

from __future__ import annotations

import csv
import io as _io
import statistics
from collections import defaultdict
from dataclasses import dataclass

from oskt import io
from oskt.config import Config
from oskt.errors import OsktError
from oskt.jobs import CellJob, reuse
from oskt.pipeline.ablation import find_ablations
from oskt.pipeline.graph import jobs_from_config
from oskt.pipeline.records import Paths, ReportRecord, TrackingTarget

METHOD_NAMES = {
    "oskt": "OSKT",
    "scratch": "Scratch",
    "wtsel": "WTSel",
    "kdpp": "KD++",
    "depgraph": "DepGraph",
    "ofa": "OFA-KD",
    "rsd": "RSD",
}
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


def collect(
    cells: tuple[CellJob, ...], paths: Paths, target: TrackingTarget
) -> tuple[dict[CellJob, dict[str, float]], list[CellJob], dict[CellJob, str]]:
    """Metrics of the newest finished MLflow run of every cell (by label and job key), the cells with none, and the
    run id of each found cell. A cell finished on disk but absent from the store is logged there first
    (``grid.ensure_logged``)."""
    from oskt.pipeline.grid import ensure_logged
    from oskt.pipeline.tracking import search_runs

    runs = search_runs(target, "tags.`oskt.kind` = 'cell' and attributes.status = 'FINISHED'")
    newest: dict[tuple[str, str], tuple[dict[str, float], str]] = {}
    for r in runs:  # newest first
        key = (r.data.tags.get("oskt.cell", ""), r.data.tags.get("oskt.key", ""))
        newest.setdefault(key, (dict(r.data.metrics), r.info.run_id))
    found, missing, run_ids = {}, [], {}
    for cell in cells:
        hit = newest.get((cell.label, cell.key))
        if hit is None and (rec := reuse(paths.job_dir(cell), cell)) is not None:
            hit = ({**rec.metrics, "seconds": rec.seconds}, ensure_logged(target, cell, rec))
        if hit is None:
            missing.append(cell)
        else:
            found[cell], run_ids[cell] = hit
    return found, missing, run_ids


def curves(run_ids: dict[CellJob, str], target: TrackingTarget) -> dict[CellJob, list[tuple[int, float]]]:
    """mAP after each fine-tune epoch of every cell (``recipe.eval_every`` epochs, and the final one), from the
    cells' MLflow metric histories (``student/eval_mAP``, ``student/final_mAP``); cells with one point are left out."""
    from oskt.pipeline.tracking import metric_history

    out = {}
    for cell, run_id in run_ids.items():
        pts = dict(metric_history(target, run_id, "student/eval_mAP"))
        pts.update(metric_history(target, run_id, "student/final_mAP"))
        if len(pts) > 1:
            out[cell] = sorted(pts.items())
    return out


def convergence_groups(cfg: Config, curves_: dict[CellJob, list[tuple[int, float]]]) -> list[tuple[str, float]]:
    """The (scenario, few-shot fraction) pairs with at least one curve, in the config's order: the figure's rows
    (a few-shot grid has a row per fraction, none for the full set it did not train)."""
    return [
        (sc, fs)
        for sc in cfg.students.scenarios
        for fs in cfg.students.few_shot
        if any(c.scenario == sc and c.few_shot == fs for c in curves_)
    ]


def mean_curves(curves_: dict[CellJob, list[tuple[int, float]]]) -> dict[tuple[str, float, str, str], dict[int, float]]:
    """(scenario, few-shot, student, method) → epoch → mAP (%) mean over the seeds that evaluated that epoch (in
    epoch order): the convergence figure's lines and the tables under it."""
    pts: dict[tuple[str, float, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c, series in curves_.items():
        for epoch, v in series:
            pts[(c.scenario, c.few_shot, c.student_name, c.method)][epoch].append(_pct(v))
    return {k: {e: statistics.fmean(vs) for e, vs in sorted(d.items())} for k, d in pts.items()}


def _panel_title(student: str, scenario: str, few_shot: float) -> str:
    """``S1, synth_a → synth_b, few-shot 0.1``: a convergence panel (figure and table)."""
    return f"{student}, {scenario.replace('->', ' → ')}" + (f", few-shot {few_shot:g}" if few_shot < 1.0 else "")


def _scenario_title(cfg: Config, scenario: str, few_shot: float) -> str:
    """``synth_a → synth_b (few-shot 0.1)``: a result table's heading (the fraction named when the grid has
    several or trains a subset)."""
    src, tgt = scenario.split("->")
    few = len(cfg.students.few_shot) > 1 or few_shot < 1
    return f"{src} → {tgt}" + (f" (few-shot {few_shot:g})" if few else "")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def plot_convergence(cfg: Config, curves_: dict[CellJob, list[tuple[int, float]]]) -> bytes:
    """PNG of mAP (%) vs fine-tune epoch, one line per method (mean over seeds), one panel per table row group
    (scenario and few-shot fraction: the rows of panels) and student (columns): the paper's convergence figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = convergence_groups(cfg, curves_)
    means = mean_curves(curves_)
    names = list(cfg.students.names)
    fig, axes = plt.subplots(len(groups), len(names), figsize=(4 * len(names), 3.2 * len(groups)), squeeze=False)
    for i, (sc, fs) in enumerate(groups):
        for j, student in enumerate(names):
            ax = axes[i][j]
            for m in cfg.students.methods:
                if (mean := means.get((sc, fs, student, m))) is not None:
                    ax.plot(list(mean), list(mean.values()), marker=".", label=method_label(m))
            ax.set_title(_panel_title(student, sc, fs), fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("fine-tune epoch")
            ax.set_ylabel("mAP (%)")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pct(v: float) -> float:
    return 100.0 * v if v <= 1.0 else v  # metrics are fractions; accept percentages too


def aggregate(found: dict[CellJob, dict[str, float]], rename: str = "") -> list[Row]:
    """Mean ± std over seeds of mAP and Rank-1 (in %) per scenario / few-shot / method / student."""
    groups: dict[tuple[str, float, str, str], list[dict[str, float]]] = defaultdict(list)
    for cell, m in found.items():
        method = f"{cell.method}[{rename}]" if rename else cell.method
        groups[(cell.scenario, cell.few_shot, method, cell.student_name)].append(m)
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


def to_markdown(cfg: Config, rows: list[Row], missing: list[str], ablations: dict[str, str] | None = None) -> str:
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
            title = "## " + _scenario_title(cfg, sc, fs)
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
        out += [f"Missing from MLflow ({len(missing)} cells): " + ", ".join(missing[:20]), ""]
    return "\n".join(out)


def _margin(values: dict[str, float]) -> float | None:
    """OSKT minus the best other method (mAP points), or None without OSKT or without another method."""
    others = [v for m, v in values.items() if m != "oskt"]
    return values["oskt"] - max(others) if "oskt" in values and others else None


def _margin_text(values: dict[str, float]) -> str:
    m = _margin(values)
    return "—" if m is None else f"{m:+.1f}"


def per_seed_markdown(cfg: Config, found: dict[CellJob, dict[str, float]]) -> str:
    """mAP (%) of every cell: per scenario (and few-shot fraction) a table of methods × (student, seed), and the
    OSKT margin over the best other method of the same seed; empty for a one-seed grid (the main table is that)."""
    seeds = list(cfg.students.seeds)
    if len(seeds) < 2:
        return ""
    by = {
        (c.scenario, c.few_shot, c.method, c.student_name, c.seed): _pct(m.get("mAP", float("nan")))
        for c, m in found.items()
    }
    cols = [(s, seed) for s in cfg.students.names for seed in seeds]
    out = ["## Per seed", "", "mAP in % of each seed; the margin is OSKT minus the best other method of that seed.", ""]
    for sc in cfg.students.scenarios:
        for fs in cfg.students.few_shot:
            if not any(k[0] == sc and k[1] == fs for k in by):
                continue
            out += ["### " + _scenario_title(cfg, sc, fs), ""]
            out += [_md_row(["Method", *(f"{s} seed {seed}" for s, seed in cols)]), "|---|" + "---|" * len(cols)]
            for m in cfg.students.methods:
                vals = [by.get((sc, fs, m, s, seed)) for s, seed in cols]
                if any(v is not None for v in vals):
                    out.append(_md_row([method_label(m), *("—" if v is None else f"{v:.1f}" for v in vals)]))
            margins = [
                _margin_text({m: by[(sc, fs, m, s, seed)] for m in cfg.students.methods if (sc, fs, m, s, seed) in by})
                for s, seed in cols
            ]
            out += [_md_row(["*OSKT margin*", *margins]), ""]
    return "\n".join(out)


def milestone_epochs(epochs: list[int]) -> list[int]:
    """The epochs a convergence table shows: the first, those nearest a quarter, half and three quarters of the
    last, and the last (each once)."""
    if not epochs:
        return []
    last = max(epochs)
    picks = [min(epochs)] + [min(epochs, key=lambda e: (abs(e - f * last), e)) for f in (0.25, 0.5, 0.75)] + [last]
    return sorted(set(picks))


def convergence_markdown(cfg: Config, curves_: dict[CellJob, list[tuple[int, float]]]) -> str:
    """Per convergence panel (scenario, few-shot fraction, student): mean mAP (%) of each method after a few
    fine-tune epochs (``milestone_epochs``) and OSKT's margin over the best other method there."""
    means = mean_curves(curves_)
    out = []
    for sc, fs in convergence_groups(cfg, curves_):
        for student in cfg.students.names:
            rows = {m: means[(sc, fs, student, m)] for m in cfg.students.methods if (sc, fs, student, m) in means}
            if not rows:
                continue
            epochs = milestone_epochs(sorted({e for d in rows.values() for e in d}))
            out += [_panel_title(student, sc, fs) + ": mAP in % after fine-tune epoch", ""]
            out += [_md_row(["Method", *(f"epoch {e}" for e in epochs)]), "|---|" + "---|" * len(epochs)]
            for m, d in rows.items():
                out.append(_md_row([method_label(m), *("—" if e not in d else f"{d[e]:.1f}" for e in epochs)]))
            margins = [_margin_text({m: d[e] for m, d in rows.items() if e in d}) for e in epochs]
            out += [_md_row(["*OSKT margin*", *margins]), ""]
    return "\n".join(out)


CELL_FIELDS = ("scenario", "few_shot", "method", "student", "seed", "mAP", "rank1", "seconds")
CURVE_FIELDS = ("scenario", "few_shot", "method", "student", "seed", "epoch", "mAP")


def _csv(fields: tuple[str, ...], rows: list) -> str:
    """A header and the rows, in the order given (report.csv, cells.csv, curves.csv: one dialect)."""
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(fields)
    w.writerows(rows)
    return buf.getvalue()


def _cell_order(c: CellJob) -> tuple:
    return (c.scenario, c.few_shot, c.method, c.student_name, c.seed)


def cells_csv(found: dict[CellJob, dict[str, float]]) -> str:
    """One row per cell (every seed): mAP / Rank-1 in % and the cell's training seconds."""
    return _csv(
        CELL_FIELDS,
        [
            (
                c.scenario,
                f"{c.few_shot:g}",
                c.method,
                c.student_name,
                c.seed,
                f"{_pct(m.get('mAP', float('nan'))):.2f}",
                f"{_pct(m.get('rank1', float('nan'))):.2f}",
                f"{m.get('seconds', float('nan')):.0f}",
            )
            for c, m in sorted(found.items(), key=lambda cm: _cell_order(cm[0]))
        ],
    )


def curves_csv(curves_: dict[CellJob, list[tuple[int, float]]]) -> str:
    """One row per cell and evaluated fine-tune epoch: mAP in % (what the convergence figure draws, unaveraged)."""
    return _csv(
        CURVE_FIELDS,
        [
            (c.scenario, f"{c.few_shot:g}", c.method, c.student_name, c.seed, e, f"{_pct(v):.2f}")
            for c, s in sorted(curves_.items(), key=lambda cs: _cell_order(cs[0]))
            for e, v in s
        ],
    )


def to_csv(rows: list[Row]) -> str:
    return _csv(
        CSV_FIELDS,
        [
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
            for r in sorted(rows, key=lambda r: (r.scenario, r.few_shot, r.method, r.params))
        ],
    )


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


def worst_query_pictures(found: dict[CellJob, dict[str, float]], paths: Paths, n: int = 8, k: int = 10) -> dict:
    """Per scenario, the ``n`` lowest-AP queries of its OSKT cell (the first student, seed 0, all identities) beside
    their top-``k`` gallery images (``oskt.eval.visrank``): ``{file name: (caption, PNG bytes)}``. A scenario whose
    cell or data is not readable here is left out (the tables do not depend on it)."""
    from oskt.eval import evaluate_dataset
    from oskt.eval.visrank import worst_queries_grid
    from oskt.models import load_model

    out: dict[str, tuple[str, bytes]] = {}
    cells = [c for c in found if c.method == "oskt" and c.seed == min(x.seed for x in found) and c.few_shot == 1.0]
    for cell in sorted(cells, key=lambda c: c.label):
        name = f"worst_{cell.scenario.replace('->', '--')}.png"
        if name in out:
            continue
        rec = reuse(paths.job_dir(cell), cell)
        if rec is None:
            continue
        try:
            model, _ = load_model(rec.checkpoint)
            ds = cell.target.load()
            result = evaluate_dataset(model, ds, cell.input, cell.eval, model.spec.family, "cpu", topk=k)
        except OsktError:
            continue
        buf = _io.BytesIO()
        worst_queries_grid(result, n=n, k=k).save(buf, format="PNG")
        src, _, tgt = cell.scenario.partition("->")
        out[name] = (f"OSKT {cell.student_name}, {src} → {tgt}: the {n} queries with the lowest AP", buf.getvalue())
    return out


def report(cfg: Config, paths: Paths, target: TrackingTarget | None) -> ReportRecord:
    """Query MLflow, write ``report.md``, ``report.csv`` and two plots under ``<out>/report``, log them back."""
    if target is None or not target.enabled:
        raise ReportError("the report is built from MLflow, but tracking is disabled (tracking.enabled=false)")
    graph = jobs_from_config(cfg)
    found, missing_cells, run_ids = collect(graph.cells, paths, target)
    if not found:
        raise ReportError(
            f"no finished grid cell of this config in MLflow experiment {target.experiment!r} at "
            f"{target.uri} or in {paths.students_dir()}: run the student grid first"
        )
    rows = aggregate(found)
    missing = [c.label for c in missing_cells]
    ablations = {}
    for name, acfg in find_ablations(cfg).items():
        a_found, a_missing, _ = collect(jobs_from_config(acfg).cells, Paths(acfg.compute.out_dir), target)
        rows += aggregate(a_found, rename=name)
        missing += [f"{c.label}[{name}]" for c in a_missing]
        diff = {k: v for k, v in acfg.flat().items() if cfg.flat().get(k) != v and not k.startswith("compute.")}
        ablations[name] = ", ".join(f"{k}={v}" for k, v in sorted(diff.items()) if k != "students.methods")
    out = paths.report_dir()
    io.makedirs(out)
    pictures = worst_query_pictures(found, paths)
    md = to_markdown(cfg, rows, missing, ablations)
    if graph.skipped:  # combinations a method cannot run, by design (the table shows —)
        reasons: dict[str, list[str]] = defaultdict(list)
        for label, why in graph.skipped:
            reasons[why].append(label)
        md += (
            "\nNot run, by design:\n\n"
            + "\n".join(f"- {why} ({len(labels)} cells, e.g. {labels[0]})" for why, labels in reasons.items())
            + "\n"
        )
    if pictures:
        md += "\n## The worst queries\n\n" + "\n".join(
            f"{caption}\n\n![{caption}]({name})\n" for name, (caption, _) in pictures.items()
        )
    if seeds_md := per_seed_markdown(cfg, found):
        md += "\n" + seeds_md
    conv = curves(run_ids, target)
    if conv:
        md += "\n## Convergence\n\nmAP on the test split after each fine-tune epoch (mean over seeds); every "
        md += "point of every seed is in `curves.csv`.\n\n![convergence](convergence.png)\n\n"
        md += convergence_markdown(cfg, conv)
    files = {
        "report.md": md.encode(),
        "report.csv": to_csv(rows).encode(),
        "cells.csv": cells_csv(found).encode(),
        **({"curves.csv": curves_csv(conv).encode()} if conv else {}),
        "acc_vs_params.png": plot(cfg, rows, "params"),
        "acc_vs_macs.png": plot(cfg, rows, "macs"),
        **({"convergence.png": plot_convergence(cfg, conv)} if conv else {}),
        **{name: png for name, (_, png) in pictures.items()},
    }
    for name, data in files.items():
        io.write_bytes_atomic(io.join(out, name), data)
    from oskt.pipeline.run import with_data_version
    from oskt.pipeline.tracking import start_run

    with start_run(
        with_data_version(target, paths), "report", {"oskt.kind": "report", "oskt.stage": "report"}
    ) as tracker:
        tracker.log_metrics({"cells_found": len(found), "cells_missing": len(missing)})
        for name in files:
            tracker.log_artifact(io.join(out, name), "report")
        run_id = tracker.run_id
    if target.parent_run_id:  # the tables and plots on the pipeline's parent run too: what the MLflow UI opens first
        from oskt.pipeline.tracking import MlflowTracker

        parent = MlflowTracker(target.uri, target.parent_run_id)
        for name in files:
            parent.log_artifact(io.join(out, name), "report")
    return ReportRecord(
        out_dir=out,
        markdown=io.join(out, "report.md"),
        csv=io.join(out, "report.csv"),
        plots=(io.join(out, "acc_vs_params.png"), io.join(out, "acc_vs_macs.png")),
        num_runs=len(found),
        run_id=run_id,
    )
