"""The rehearsal config (``oskt.pipeline.rehearsal``), the cost table (``oskt.pipeline.cost``), the phase peak-memory
reset, and the ``oskt rehearse`` refusals through the CLI (nothing written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from oskt.config import METHODS, load_config
from oskt.errors import ConfigError
from oskt.pipeline.cost import FULL_SIZES, CostTable, GpuModel, cost_markdown, cost_table, table_from_dict
from oskt.pipeline.graph import jobs_from_config
from oskt.pipeline.rehearsal import (
    REHEARSAL_PROFILES,
    rehearsal_config,
    rehearsal_overrides,
    report_gaps,
    small_overrides,
    standin_sizes,
    update_record,
    write_standins,
)

# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("profile", REHEARSAL_PROFILES)
def test_rehearsal_keeps_the_profile_and_cuts_only_length_data_and_place(profile: str, tmp_path) -> None:  # noqa: ANN001
    base, cfg = load_config(profile=profile), rehearsal_config(profile, str(tmp_path), iters=3)
    # the profile's models, input size, batch, schedulers, milestones, AMP, sources, chains, students, scenarios
    for section, keys in {
        "teacher": ("arch", "name", "milestones", "drop_path", "pretrained"),
        "chain": ("widths", "milestones", "metric", "refine_schedule"),
        "students": ("names", "scenarios", "seeds", "milestones"),
        "train": ("scheduler", "warmup_epochs", "amp", "ids_per_batch", "images_per_id", "optimizer", "lr"),
        "data": ("sources", "height", "width", "normalize"),
    }.items():
        for k in keys:
            assert getattr(getattr(cfg, section), k) == getattr(getattr(base, section), k), f"{section}.{k}"
    assert (cfg.teacher.epochs, cfg.chain.epochs, cfg.students.epochs) == (1, 1, 1)
    assert cfg.train.max_iters_per_epoch == 3
    assert cfg.students.methods == METHODS
    # the distillers' source phase where the profile has one, cut to one epoch
    for m in ("kdpp", "ofa", "rsd"):
        assert getattr(cfg.baselines, m).epochs == min(1, getattr(base.baselines, m).epochs)
    assert cfg.data.root == str(tmp_path / "data") and cfg.compute.out_dir == str(tmp_path / "out")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db" and cfg.tracking.experiment == f"rehearsal-{profile}"
    assert cfg.compute.device == "cpu" and cfg.compute.gpus_per_task == 0  # a CPU cell reserving a GPU never runs


@pytest.mark.parametrize("profile", REHEARSAL_PROFILES)
def test_every_cell_of_the_paper_layout_is_in_the_rehearsal(profile: str) -> None:
    cfg = rehearsal_config(profile, "")
    graph = jobs_from_config(cfg)
    st = cfg.students
    assert graph.skipped == ()  # OFA's cross-scenario cells run (their source phase), nothing is left out
    assert {(c.scenario, c.student_name, c.method) for c in graph.cells} == {
        (sc, n, m) for sc in st.scenarios for n in st.names for m in METHODS
    }
    assert len(graph.teachers) == len(cfg.data.sources)
    assert len(graph.chains) == len(cfg.data.sources) * len(cfg.chain.widths)
    cross = [c for c in graph.cells if c.source != c.target.name and c.method in ("kdpp", "ofa")]
    assert cross and all(c.distil is not None and c.distil.epochs == 1 for c in cross)


@pytest.mark.parametrize("profile", REHEARSAL_PROFILES)
def test_the_paper_profiles_compare_every_method_and_run_every_cell(profile: str) -> None:
    cfg = load_config(profile=profile)
    assert cfg.students.methods == METHODS
    assert jobs_from_config(cfg).skipped == ()


def test_small_rehearsal_is_one_cross_scenario_two_students_one_wide() -> None:
    cfg = rehearsal_config("paper", "", small=True)
    graph = jobs_from_config(cfg)
    assert cfg.students.scenarios == ("market1501->cuhk03",) and set(cfg.students.names) == {"S1", "S4"}
    assert cfg.teacher.name == "T" and (cfg.data.height, cfg.data.width) == (256, 128)  # full size
    assert len(graph.cells) == 2 * len(METHODS) and len(graph.chains) == 1
    assert any(c.distil is not None for c in graph.cells)  # the distillers' source phase is exercised
    assert set(small_overrides("paper_vit")) != set(small_overrides("paper"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"profile": "quick"}, "rehearsal profile 'quick'"), ({"profile": "paper", "iters": 0}, "iters=0")],
)
def test_bad_rehearsal_arguments_are_one_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        rehearsal_overrides(root="", **kwargs)


def test_standins_are_written_where_the_config_reads_them_and_fill_a_batch(tmp_path) -> None:  # noqa: ANN001
    from oskt.config import InputConfig
    from oskt.data import build_train_loader, load_dataset

    cfg = rehearsal_config("paper", str(tmp_path), small=True, iters=2)
    made = write_standins(cfg)
    assert set(made) == {"market1501", "cuhk03"}
    sizes = standin_sizes(cfg)
    recipe = jobs_from_config(cfg).teachers["market1501"].recipe
    for name in made:
        ds = load_dataset(name, cfg.data)  # the real parser, where data.datasets expects the real set
        assert ds.num_train_pids == sizes["ids"] > cfg.train.ids_per_batch
        assert ds.query and ds.gallery
        # the P×K sampler's epoch holds the phase's iterations (fewer ids gave MSMT17 / CUHK03-NP one batch)
        assert len(build_train_loader(ds.train, InputConfig.of(cfg.data), recipe, "resnet", 0)) >= 2
    again = write_standins(cfg)  # complete identical stand-ins are kept
    assert not any(v["generated"] for v in again.values())


def test_a_used_data_set_without_a_standin_layout_is_an_error(tmp_path) -> None:  # noqa: ANN001
    cfg = rehearsal_config(
        "paper",
        str(tmp_path),
        small=True,
        overrides=[
            "data.datasets={market1501: {layout: market1501, path: M}, cuhk03: {layout: folder, path: CUHK03-NP}}"
        ],
    )
    with pytest.raises(ConfigError, match="cuhk03.layout='folder'"):
        write_standins(cfg)
    assert not os.path.exists(tmp_path / "data" / "CUHK03-NP")


def test_report_gaps_name_every_empty_entry() -> None:
    md = "\n".join(
        [
            "# OSKT comparison (paper profile)",
            "## market1501 → market1501",
            "| Method | S1 (0.37M, 72.0M) | S2 |",
            "|---|---|---|",
            "| OSKT | 10.0/20.0 | — |",
            "| KD++ | 1.0/2.0 | 3.0/4.0 |",
            "## msmt17 → cuhk03",
            "| Method | S1 | S2 |",
            "|---|---|---|",
            "| OFA-KD | — | — |",
            "Missing from MLflow (3 cells): a, b, c",
        ]
    )
    assert report_gaps(md) == [
        "market1501 → market1501 / OSKT / column 2",
        "msmt17 → cuhk03 / OFA-KD / column 1",
        "msmt17 → cuhk03 / OFA-KD / column 2",
        "Missing from MLflow (3 cells)",
    ]
    assert report_gaps(md.replace("—", "5.0/6.0").replace("Missing from MLflow", "")) == []


# ------------------------------------------------------------------------------------------------ cost


def _fake_rehearsal(tmp_path, spi: float) -> tuple:  # noqa: ANN001
    """The small rehearsal's folders with a history (``spi`` seconds per iteration) and peaks, no training."""
    from oskt.jobs import record_result
    from oskt.pipeline.records import Paths

    cfg = rehearsal_config("paper", str(tmp_path), small=True, iters=2)
    paths = Paths(cfg.compute.out_dir)
    for job in jobs_from_config(cfg).jobs():
        folder = paths.job_dir(job)
        phases = [folder] if job.kind != "cell" else [os.path.join(folder, "finetune")]
        if job.kind == "cell" and job.distil is not None:
            phases.append(os.path.join(folder, "distil"))
        for i, ph in enumerate(phases):
            os.makedirs(ph, exist_ok=True)
            with open(os.path.join(ph, "history.json"), "w") as f:
                json.dump([{"seconds": 2 * spi * (1 + i), "iters": 2.0}], f)
            with open(os.path.join(ph, "result.json"), "w") as f:
                json.dump({"key": "x", "kind": "student", "metrics": {"peak_rss_mib": 100.0 + i}}, f)
        record_result(folder, job, files={}, metrics={"peak_rss_mib": 100.0}, seconds=1.0)
    return cfg, load_config(profile="paper")


def test_cost_rows_follow_from_the_measurements_and_the_real_data_sizes(tmp_path) -> None:  # noqa: ANN001
    from oskt.eval.complexity import spec_macs

    cfg, full = _fake_rehearsal(tmp_path, spi=3.0)
    gpu = GpuModel(name="G", sustained_tflops=50.0, step_overhead_ms=10.0)
    table = cost_table(cfg, full, gpu=gpu)
    rows = {(r.kind, r.name): r for r in table.rows}
    graph = jobs_from_config(full)
    # one row per teacher source, chain width and (student, method) of the FULL profile
    assert set(rows) == (
        {("teacher", s) for s in full.data.sources}
        | {("chain", f"w{w}") for w in full.chain.widths}
        | {("cell", f"{n} {m}") for n in full.students.names for m in full.students.methods}
    )
    t = rows[("teacher", "market1501")]
    batch = full.train.ids_per_batch * full.train.images_per_id
    iters = full.teacher.epochs * (FULL_SIZES["market1501"].train_images // batch)
    macs = spec_macs(graph.teachers["market1501"].model, attention=True)
    assert (t.seconds_per_iter, t.full_iters, t.macs_per_image, t.train_macs_per_image) == (3.0, iters, macs, 3 * macs)
    evals = (full.teacher.epochs - 1) // full.train.eval_every + 1  # every eval_every epochs, and at the end
    m = FULL_SIZES["market1501"]
    assert t.full_eval_images == evals * (m.query + m.gallery)
    gpu_s = iters * 0.010 + 2 * (batch * iters * 3 * macs + t.full_eval_images * macs) / 50e12
    assert math.isclose(t.gpu_hours, gpu_s / 3600)
    assert t.measured_batch == cfg.train.batch_size < batch  # the small rehearsal's 4 x 2 batch, scaled by images
    cpu_train_s = iters * 3.0 * (batch / cfg.train.batch_size) * cfg.compute.num_threads
    assert cpu_train_s / 3600 < t.cpu_core_hours < 1.5 * cpu_train_s / 3600  # + evaluation at the same s/MAC
    assert t.peak_rss_mib == 100.0
    # a measured cell: its source distillation measured apart; unmeasured kinds are nan, their GPU-hours counted
    kd = rows[("cell", "S4 kdpp")]
    assert kd.distil_seconds_per_iter == 6.0 and kd.seconds_per_iter == 3.0
    assert kd.runs == len(full.students.scenarios) and kd.peak_rss_mib == 101.0
    assert math.isnan(rows[("cell", "S6 oskt")].seconds_per_iter) and rows[("cell", "S6 oskt")].gpu_hours > 0
    assert not table.complete
    assert math.isclose(table.gpu_hours, sum(r.gpu_hours for r in table.rows))


def test_a_distiller_costs_the_teacher_forward_and_its_source_phase(tmp_path) -> None:  # noqa: ANN001
    cfg, full = _fake_rehearsal(tmp_path, spi=1.0)
    rows = {(r.kind, r.name): r for r in cost_table(cfg, full).rows}
    kd, sc = rows[("cell", "S1 kdpp")], rows[("cell", "S1 scratch")]
    assert kd.full_iters > sc.full_iters  # + the source distillation epochs of the cross-scenario cells
    rsd = rows[("cell", "S1 rsd")]  # distils during the fine-tune: the teacher's forward on every image
    assert rsd.train_macs_per_image > sc.train_macs_per_image and rsd.full_iters == sc.full_iters
    # KD++ distils during the fine-tune in M→M only (a source phase across data sets): its mean lies between
    assert sc.train_macs_per_image < kd.train_macs_per_image < rsd.train_macs_per_image


def test_cost_table_round_trips_and_renders(tmp_path) -> None:  # noqa: ANN001
    cfg, full = _fake_rehearsal(tmp_path, spi=2.0)
    table = cost_table(cfg, full, notes=["a note"])
    back = table_from_dict(json.loads(json.dumps(table.to_dict())))
    assert isinstance(back, CostTable) and math.isclose(back.gpu_hours, table.gpu_hours, rel_tol=1e-3)
    md = cost_markdown([table.to_dict()], "# Header")
    assert md.startswith("# Header") and "| **total** |" in md and "a note" in md
    assert md.count("| cell S") == len(full.students.names) * len(full.students.methods)
    assert f"{table.gpu.sustained_tflops:g} TFLOP/s" in md  # the GPU assumption is stated


def test_unknown_full_size_is_an_error() -> None:
    cfg = load_config(profile="quick")
    with pytest.raises(ConfigError, match="no known full size"):
        cost_table(cfg, cfg)


def test_update_record_keeps_other_profiles_and_refuses_a_bad_file(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / "r.json")
    update_record(path, "paper", {"a": 1})
    assert update_record(path, "paper_vit", {"b": 2}) == {"paper": {"a": 1}, "paper_vit": {"b": 2}}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        update_record(str(bad), "paper", {})
    assert bad.read_text() == "[1, 2"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_phase_peak_memory_is_the_phase_s_not_the_process_lifetime_s() -> None:
    # in a fresh process: the test process's own history (other tests, a pytest-xdist worker) is not the point
    code = (
        "import numpy as np, torch\n"
        "from oskt.train.phase import peak_memory, reset_peak_memory\n"
        "big = np.ones(256 * 2**20 // 8)\n"  # 256 MiB touched
        "before = peak_memory(torch.device('cpu'))['peak_rss_mib']\n"
        "del big\n"
        "reset_peak_memory(torch.device('cpu'))\n"
        "print(before, peak_memory(torch.device('cpu'))['peak_rss_mib'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after = map(float, out.stdout.split())
    assert after < before - 128, (before, after)


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    return subprocess.run(
        [sys.executable, "-m", "oskt", "rehearse", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_rehearse_refuses_a_folder_it_did_not_make_and_writes_nothing(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    r = _cli("--profile", "paper", "--out", str(out), cwd=str(tmp_path))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("oskt: error:")]
    assert len(errors) == 1 and "holds files a rehearsal did not write" in errors[0] and str(out) in errors[0]
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"


def test_rehearse_bad_iters_is_one_error_before_anything_is_written(tmp_path) -> None:  # noqa: ANN001
    r = _cli("--profile", "paper", "--iters", "0", "--out", str(tmp_path / "r"), cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("oskt: error: rehearsal iters=0")
    assert not os.path.exists(tmp_path / "r")


def test_rehearse_no_run_needs_a_finished_rehearsal(tmp_path) -> None:  # noqa: ANN001
    r = _cli("--profile", "paper", "--no-run", "--out", str(tmp_path / "none"), cwd=str(tmp_path))
    assert r.returncode == 2 and "holds no rehearsal" in r.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "none")


def test_what_a_rehearsal_run_finished_is_read_from_the_records_local_or_remote(tmp_path) -> None:  # noqa: ANN001
    """The rehearsal adds a run's time only when it trained something: it compares the finished jobs' records
    before and after, in the config's output folder, which may be a URL."""
    from flows.rehearse import _finished
    from oskt import io
    from oskt.jobs import RESULT_FILE
    from oskt.pipeline.records import Paths

    for out in (str(tmp_path / "out"), "memory://oskt-rehearse-finished/out"):
        cfg = load_config(profile="smoke", overrides=[f"compute.out_dir={out}"])
        assert _finished(cfg) == {}
        teacher = next(iter(jobs_from_config(cfg).teachers.values()))
        path = io.join(Paths(out).job_dir(teacher), RESULT_FILE)
        io.write_json_atomic(path, {"key": "k", "seconds": 1.0})
        before = _finished(cfg)
        assert before == {path: {"key": "k", "seconds": 1.0}}
        io.write_json_atomic(path, {"key": "k", "seconds": 2.0})  # trained again
        assert _finished(cfg) != before
