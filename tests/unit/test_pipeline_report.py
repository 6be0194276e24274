"""The report's tables from synthetic per-cell metrics (no MLflow): layout, mean ± std, CSV, plots."""

from __future__ import annotations

import csv
import io

import pytest

from oskt.config import load_config
from oskt.pipeline.graph import jobs_from_config
from oskt.pipeline.reporting import METHOD_NAMES, aggregate, plot, to_csv, to_markdown


def _found(cfg) -> dict:  # noqa: ANN001
    out = {}
    for c in jobs_from_config(cfg).cells:
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
    md = to_markdown(cfg, aggregate(found), [gone.label])
    assert "—" in md and gone.label in md


def test_plots_are_png() -> None:
    pytest.importorskip("matplotlib")
    cfg = load_config(profile="smoke")
    rows = aggregate(_found(cfg))
    assert plot(cfg, rows, "params")[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot(cfg, rows, "macs")[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_rows_follow_the_methods() -> None:
    from dataclasses import replace

    cfg = load_config(profile="smoke")
    rows = aggregate(_found(cfg))
    rows += [replace(r, method="oskt[random-init]", map_mean=12.5) for r in rows if r.method == "oskt"]
    md = to_markdown(cfg, rows, [], {"random-init": "chain.init=random"})
    table = md.split("## ")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[-1].startswith("| OSKT (random-init) | 12.5/")  # after the five methods, same columns
    assert [ln.split(" |")[0][2:] for ln in lines[1:-1]] == [METHOD_NAMES[m] for m in cfg.students.methods]
    assert "- OSKT (random-init): `chain.init=random`" in md
    csv_rows = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert {r["method"] for r in csv_rows} >= {"oskt", "oskt[random-init]"}


def test_ablation_configs_are_recorded_and_found(tmp_path) -> None:  # noqa: ANN001
    from oskt import io as oio
    from oskt.errors import ConfigError
    from oskt.pipeline.ablation import ablation_config, find_ablations, prepare_ablation
    from oskt.pipeline.records import Paths

    cfg = load_config(profile="smoke", overrides=[f"compute.out_dir={tmp_path}/out"])
    acfg = prepare_ablation(cfg, "cosine", ["chain.metric=cosine"])
    assert acfg.chain.metric == "cosine" and acfg.students.methods == ("oskt",)
    assert acfg.compute.out_dir == f"{tmp_path}/out/ablations/cosine"
    assert acfg.teacher == cfg.teacher and acfg.students.names == cfg.students.names
    # the main run's teachers (and unchanged chains) are adopted from its root by key (tests/flows: not retrained)
    assert Paths.of(acfg.compute).reuse_from == (cfg.compute.out_dir,)
    assert oio.read_json(oio.join(acfg.compute.out_dir, "ablation.json"))["overrides"] == ["chain.metric=cosine"]
    assert find_ablations(cfg) == {"cosine": acfg}
    with pytest.raises(ConfigError, match="no --set"):
        ablation_config(cfg, "empty", [])
    with pytest.raises(ConfigError, match="ablation name"):
        ablation_config(cfg, "../x", ["chain.init=random"])
    with pytest.raises(ConfigError, match="chain.nope"):
        ablation_config(cfg, "bad", ["chain.nope=1"])


def test_the_convergence_figure_has_a_row_per_scenario_and_few_shot_fraction_it_trained() -> None:
    from PIL import Image

    from oskt.pipeline.reporting import convergence_groups, plot_convergence

    few = ["students.few_shot=[0.1,0.3,0.5]", "students.scenarios=[synth_a->synth_b]", "students.names=[S1]"]
    for overrides, rows in (([], [("synth_a->synth_a", 1.0), ("synth_a->synth_b", 1.0)]), (few, None)):
        cfg = load_config(profile="quick", overrides=overrides)
        cells = jobs_from_config(cfg).cells
        curves = {c: [(1, 0.1 + 0.01 * c.seed), (2, 0.3)] for c in cells}
        groups = convergence_groups(cfg, curves)
        assert groups == (rows or [("synth_a->synth_b", f) for f in (0.1, 0.3, 0.5)])  # never an empty row
        png = Image.open(io.BytesIO(plot_convergence(cfg, curves)))
        assert png.size == (400 * len(cfg.students.names), 320 * len(groups))
    assert convergence_groups(cfg, {}) == []  # no curve: no figure (the report leaves the section out)


def test_the_per_seed_table_shows_every_cell_and_the_margin_of_each_seed_where_a_baseline_can_win() -> None:
    from oskt.pipeline.reporting import per_seed_markdown

    cfg = load_config(profile="smoke", overrides=["students.seeds=[0,1]", "students.scenarios=[synth_a->synth_a]"])
    found = _found(cfg)  # oskt 40 + seed, the others 30 + seed (mAP in %)
    win = next(c for c in found if c.method == "kdpp" and c.seed == 1 and c.student_name == "S1")
    found[win] = {**found[win], "mAP": 0.45}  # KD++ beats OSKT (41.0) at S1 seed 1
    del found[next(c for c in found if c.method == "scratch" and c.seed == 0 and c.student_name == "S2")]
    md = per_seed_markdown(cfg, found)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| Method | S1 seed 0 | S1 seed 1 | S2 seed 0 | S2 seed 1 |"
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ")[1:] for ln in lines[1:]}
    assert rows["OSKT"] == ["40.0", "41.0", "40.0", "41.0 |"]
    assert rows["KD++"] == ["30.0", "45.0", "30.0", "31.0 |"]
    assert rows["Scratch"][2] == "—"  # a missing cell is shown as missing, not averaged away
    assert rows["*OSKT margin*"] == ["+10.0", "-4.0", "+10.0", "+10.0 |"]
    assert per_seed_markdown(load_config(profile="smoke"), _found(load_config(profile="smoke"))) == ""  # one seed


def test_convergence_tables_and_csvs_keep_every_epoch_of_every_seed() -> None:
    from oskt.pipeline.reporting import cells_csv, convergence_markdown, curves_csv, milestone_epochs

    assert milestone_epochs(list(range(1, 25))) == [1, 6, 12, 18, 24]
    assert milestone_epochs(list(range(2, 25, 2))) == [2, 6, 12, 18, 24]
    assert milestone_epochs([1, 2]) == [1, 2] and milestone_epochs([]) == []
    cfg = load_config(profile="smoke", overrides=["students.seeds=[0,1]", "students.names=[S1]"])
    cells = [c for c in jobs_from_config(cfg).cells if c.scenario == "synth_a->synth_a"]
    # OSKT starts ahead (0.5 at epoch 1), every baseline ends ahead of it at epoch 4 (0.8 vs 0.7)
    curves = {
        c: [(e, (0.5 if e == 1 else 0.7) if c.method == "oskt" else 0.2 * e + 0.01 * c.seed) for e in (1, 2, 3, 4)]
        for c in cells
    }
    md = convergence_markdown(cfg, curves)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert md.startswith("S1, synth_a → synth_a: mAP in % after fine-tune epoch")
    assert lines[0] == "| Method | epoch 1 | epoch 2 | epoch 3 | epoch 4 |"
    assert "| OSKT | 50.0 | 70.0 | 70.0 | 70.0 |" in lines
    assert "| Scratch | 20.5 | 40.5 | 60.5 | 80.5 |" in lines  # the mean over seeds 0 and 1
    assert lines[-1] == "| *OSKT margin* | +29.5 | +29.5 | +9.5 | -10.5 |"
    rows = list(csv.DictReader(io.StringIO(curves_csv(curves))))
    assert len(rows) == 4 * len(cells) and {r["seed"] for r in rows} == {"0", "1"}
    found = _found(cfg)
    crow = list(csv.DictReader(io.StringIO(cells_csv(found))))
    assert len(crow) == len(found)
    assert {(r["method"], r["seed"], r["mAP"]) for r in crow if r["method"] == "oskt"} == {
        ("oskt", "0", "40.00"),
        ("oskt", "1", "41.00"),
    }
