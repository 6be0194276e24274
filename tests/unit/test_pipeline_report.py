"""The report's tables from synthetic per-cell metrics (no MLflow): layout, mean ± std, CSV, plots."""

from __future__ import annotations

import csv
import io

import pytest

from oskt.config import load_config
from oskt.pipeline.grid import grid_cells
from oskt.pipeline.reporting import METHOD_NAMES, aggregate, plot, to_csv, to_markdown


def _found(cfg) -> dict:  # noqa: ANN001
    out = {}
    for c in grid_cells(cfg):
        bonus = 0.1 if c.method == "oskt" else 0.0
        out[c] = {"mAP": 0.3 + bonus + 0.01 * c.seed, "rank1": 0.5 + bonus, "params": 1.5e6, "macs": 2.0e8}
    return out


def test_markdown_has_methods_by_students_per_scenario_with_mean_and_std() -> None:
    cfg = load_config(profile="smoke", overrides=["students.seeds=[0,2]"])
    rows = aggregate(_found(cfg))
    md = to_markdown(cfg, rows, [])
    for sc in cfg.students.scenarios:
        a, b = sc.split("->")
        assert f"## {a} → {b}" in md
    for m in cfg.students.methods:
        assert f"| {METHOD_NAMES[m]} |" in md
    assert "| Method | S1 (1.50M, 0.20G) | S2 (1.50M, 0.20G) |" in md
    assert "41.0±1.0/60.0±0.0" in md  # oskt: mAP (0.40, 0.42) -> 41.0 ± 1.0, R1 60.0 ± 0.0
    rows_csv = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(rows_csv) == len(cfg.students.scenarios) * len(cfg.students.names) * len(cfg.students.methods)
    assert {r["n_seeds"] for r in rows_csv} == {"2"}


def test_missing_cells_are_shown_not_hidden() -> None:
    cfg = load_config(profile="smoke")
    found = _found(cfg)
    gone = next(c for c in found if c.method == "kdpp")
    del found[gone]
    md = to_markdown(cfg, aggregate(found), [gone])
    assert "—" in md and gone.name in md


def test_plots_are_png() -> None:
    pytest.importorskip("matplotlib")
    cfg = load_config(profile="smoke")
    rows = aggregate(_found(cfg))
    assert plot(cfg, rows, "params")[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot(cfg, rows, "macs")[:8] == b"\x89PNG\r\n\x1a\n"
