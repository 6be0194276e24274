"""Jobs, keys and the one reuse rule (oskt/jobs.py, oskt/pipeline/graph.py): what changes which key, what a folder
says about a job, and dvc.yaml / params.yaml generated from the same reads. (The same invariants through the real
pipeline, with training, are in tests/integration/test_pipeline_dvc.py.)"""

from __future__ import annotations

import os

import pytest

from oskt import io
from oskt.config import PROFILES, dump_config, load_config
from oskt.jobs import describe, flatten, job_key, job_status, record_result, reuse, settings, start_job
from oskt.pipeline.graph import config_reads, jobs_from_config, stage_reads, teacher_job
from oskt.pipeline.records import Paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK_CELLS = 42


def _keys(*overrides: str) -> dict[str, dict[str, str]]:
    g = jobs_from_config(load_config(profile="quick", overrides=list(overrides)))
    return {
        "teacher": {s: j.key for s, j in g.teachers.items()},
        "chain": {f"{s}/w{w}": j.key for (s, w), j in g.chains.items()},
        "cell": {c.label: c.key for c in g.cells},
    }


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if k in b and a[k] != b[k]}


def _all_labels(g) -> set[str]:  # noqa: ANN001
    return {c.label for c in g.cells} | {label for label, _ in g.skipped}


def test_the_grid_is_the_full_product_with_unique_labels() -> None:
    g = jobs_from_config(load_config(profile="quick", overrides=["students.seeds=[0,1]", "students.few_shot=[0.5,1]"]))
    # OFA-KD distils logits: a few-shot subset of A's identities is not the teacher's (skipped, with the reason)
    skipped = {c for c in _all_labels(g) if "__ofa__" in c and "fs0.5" in c and c.startswith("synth_a--synth_a")}
    assert {label for label, _ in g.skipped} == skipped  # A→B few-shot: after its source phase it runs
    assert len(g.cells) + len(g.skipped) == 4 * QUICK_CELLS and len({c.label for c in g.cells}) == len(g.cells)
    assert all("set baselines.ofa.epochs > 0" in why for _, why in g.skipped)
    c = next(c for c in g.cells if c.method == "oskt" and c.student_name == "S2" and c.scenario == "synth_a->synth_b")
    assert c.label == "synth_a--synth_b__S2__oskt__seed0__fs0.5" or c.label.startswith("synth_a--synth_b__S2__oskt")
    assert Paths("out").job_dir(c) == os.path.join("out", "students", c.label)


def test_settings_show_the_whole_recipe_while_the_key_keeps_only_what_differs() -> None:
    cfg = load_config(profile="quick")
    cell = next(c for c in jobs_from_config(cfg).cells if c.method == "kdpp")
    full, ident = flatten(settings(cell)), flatten(describe(cell))
    assert set(ident) < set(full) and all(full[k] == v for k, v in ident.items())
    # fields at their declared default are in the settings (what MLflow shows), not in the identity (the key)
    assert full["recipe.epochs"] == cfg.students.epochs and full["recipe.label_smoothing"] == cfg.train.label_smoothing
    assert not any(k.startswith("run.") or k == "run" for k in full)  # run options never (a URI may carry secrets)
    # a nested job stands as its key in both, never as its own fields
    assert full["teacher"] == ident["teacher"] == f"teacher {job_key(cell.teacher)}"
    assert not any(k.startswith("teacher.") for k in full)


def test_a_cell_names_only_the_upstream_jobs_its_method_reads() -> None:
    g = jobs_from_config(load_config(profile="quick"))
    by = {(c.method, c.student_name, c.scenario): c for c in g.cells}
    oskt_s2 = by[("oskt", "S2", "synth_a->synth_a")]
    assert oskt_s2.chain is g.chains[("synth_a", 8)] and oskt_s2.teacher is None  # S2 expands chain 8 (SPEC §3.3)
    assert by[("oskt", "S3", "synth_a->synth_a")].chain is g.chains[("synth_a", 16)]
    scratch = by[("scratch", "S1", "synth_a->synth_a")]
    assert scratch.teacher is None and scratch.chain is None and scratch.settings is None
    for m in ("wtsel", "kdpp", "depgraph"):
        c = by[(m, "S1", "synth_a->synth_b")]
        assert c.teacher is g.teachers["synth_a"] and c.chain is None
        assert c.settings == getattr(load_config(profile="quick").baselines, m)


def test_adding_a_chain_width_changes_only_the_oskt_cells_whose_chain_changes() -> None:
    base = _keys()
    more = _keys("chain.widths=[8,16,24]")  # r32 teacher: chain 24 fits S3? no (24 > 16 stem); S2 / S3 unchanged
    assert more["teacher"] == base["teacher"]
    assert _changed(base["chain"], more["chain"]) == set() and "synth_a/w24" in more["chain"]
    wider = _keys("chain.widths=[4,8,16]")  # a narrower chain changes nothing a student picks (the widest fits)
    assert wider["cell"] == base["cell"] and wider["teacher"] == base["teacher"]
    one = _keys("chain.widths=[8]")  # S3 loses chain 16: only the OSKT S3 cells change
    changed = _changed(base["cell"], one["cell"])
    assert changed == {k for k in base["cell"] if "__S3__oskt__" in k} and len(changed) == 2


def test_a_method_setting_changes_only_that_methods_cells() -> None:
    base = _keys()
    kd = _keys("baselines.kdpp.temperature=3")
    assert _changed(base["cell"], kd["cell"]) == {k for k in base["cell"] if "__kdpp__" in k}
    assert kd["teacher"] == base["teacher"] and kd["chain"] == base["chain"]
    dg = _keys("baselines.depgraph.importance_p=1")
    assert _changed(base["cell"], dg["cell"]) == {k for k in base["cell"] if "__depgraph__" in k}


def test_the_fine_tune_recipe_changes_every_cell_and_nothing_upstream() -> None:
    base = _keys()
    lr = _keys("students.lr=0.001")
    assert _changed(base["cell"], lr["cell"]) == set(base["cell"])
    assert lr["teacher"] == base["teacher"] and lr["chain"] == base["chain"]
    teacher = _keys("teacher.epochs=17")  # the teacher changes: its chains and every cell that reads either
    assert _changed(base["chain"], teacher["chain"]) == set(base["chain"])
    assert _changed(base["cell"], teacher["cell"]) == {k for k in base["cell"] if "__scratch__" not in k}


@pytest.mark.parametrize(
    "override",
    [
        "tracking.uri=sqlite:///elsewhere.db",
        "train.progress=true",
        "train.log_every=7",
        "data.num_workers=3",
        "eval.batch_size=7",
        "eval.query_chunk=9",
        "compute.device=cpu",
        "compute.engine=serial",
        "compute.out_dir=other",
    ],
)
def test_run_options_and_infrastructure_change_no_key(override: str) -> None:
    assert _keys(override) == _keys()


def test_a_new_source_or_seed_keeps_every_existing_key() -> None:
    base = _keys()
    seeds = _keys("students.seeds=[0,1]")
    assert all(seeds["cell"][k] == v for k, v in base["cell"].items())
    src = _keys(
        "data.sources=[synth_a,synth_b]", "students.scenarios=[synth_a->synth_a,synth_a->synth_b,synth_b->synth_b]"
    )
    assert src["teacher"]["synth_a"] == base["teacher"]["synth_a"] and "synth_b" in src["teacher"]
    assert all(src["cell"][k] == v for k, v in base["cell"].items())


def test_reuse_status_and_the_fields_that_changed(tmp_path) -> None:  # noqa: ANN001
    cfg = load_config(profile="quick")
    job = teacher_job(cfg, "synth_a")
    out = str(tmp_path / "t")
    assert job_status(out, job).state == "missing" and reuse(out, job) is None
    start_job(out, job)
    assert job_status(out, job).state == "running"
    ckpt = os.path.join(out, "teacher.pt")
    io.write_bytes_atomic(ckpt, b"x")
    record_result(out, job, files={"checkpoint": ckpt}, metrics={"mAP": 0.5}, seconds=1.0)
    rec = reuse(out, job)
    assert rec is not None and rec.key == job_key(job) and rec.metrics == {"mAP": 0.5}
    assert job_status(out, job).state == "done"
    other = teacher_job(load_config(profile="quick", overrides=["train.lr=0.001", "teacher.seed=3"]), "synth_a")
    assert reuse(out, other) is None
    st = job_status(out, other)
    assert st.state == "stale" and st.changed == ("recipe.lr: 0.003 -> 0.001", "seed: 0 -> 3")
    os.remove(ckpt)  # a recorded file lost: not reusable
    assert reuse(out, job) is None and job_status(out, job).changed == ("output files missing",)


def test_config_reads_records_what_a_job_reads() -> None:
    cfg = load_config(profile="quick")
    job, keys = config_reads(lambda c: teacher_job(c, "synth_a"), cfg)
    assert job == teacher_job(cfg, "synth_a")  # the same job, built from real config objects
    assert {"teacher.epochs", "train.lr", "data.datasets.synth_a.layout", "data.synthetic.seed"} <= keys
    assert not any(k.startswith(("students.", "chain.", "baselines.", "tracking.", "compute.")) for k in keys)
    assert not {"train.progress", "eval.batch_size", "data.num_workers"} & keys  # run options
    reads = stage_reads(cfg)
    assert "chain.widths" in reads["students"] and "students.lr" in reads["students"]
    assert not any(k.startswith("students.") for k in reads["teacher"] | reads["chain"])


def test_dvc_yaml_is_generated_from_what_the_jobs_read() -> None:
    from oskt.pipeline.dvcfile import expected

    with open(os.path.join(ROOT, "dvc.yaml")) as f:
        assert f.read() == expected(), "dvc.yaml drifted from the jobs: run `python -m oskt.pipeline.dvcfile`"


def test_every_dvc_param_is_a_key_some_profile_reads() -> None:
    import yaml

    read: set[str] = set()
    for p in PROFILES:
        for keys in stage_reads(load_config(profile=p)).values():
            read |= keys
    with open(os.path.join(ROOT, "dvc.yaml")) as f:
        stages = yaml.safe_load(f)["stages"]
    for name, st in stages.items():
        for param in st.get("do", st)["params"]:
            if param in ("tracking", "profile"):
                continue
            plain = param.replace("${item}", "synth_a").replace("${item.source}", "synth_a")
            assert any(k == plain or k.startswith(plain + ".") or k.startswith(param) for k in read), (name, param)


def test_params_yaml_is_exactly_the_resolved_quick_profile() -> None:
    with open(os.path.join(ROOT, "params.yaml")) as f:
        text = f.read()
    assert text == dump_config(load_config(profile="quick")), (
        "params.yaml drifted: regenerate with `oskt config init --profile quick -o params.yaml --force`"
    )


def test_dvc_repo_files_are_commit_ready() -> None:
    with open(os.path.join(ROOT, ".dvc", "config")) as f:
        config = f.read()
    assert "remote = local" in config and "url = ../dvc-remote" in config
    assert os.path.exists(os.path.join(ROOT, ".dvcignore"))
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "/dvc-remote/" in f.read()


def test_a_run_in_another_folder_adopts_finished_upstream_jobs_of_the_same_key_only(tmp_path) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from oskt.pipeline.stages import train_teacher

    cfg = load_config(profile="quick")
    job = teacher_job(cfg, "synth_a")
    main, new = str(tmp_path / "main"), str(tmp_path / "long")
    out = Paths(main).job_dir(job)
    ckpt = os.path.join(out, "teacher.pt")
    io.write_bytes_atomic(ckpt, b"weights")
    record_result(out, job, files={"checkpoint": ckpt}, metrics={"mAP": 0.5}, seconds=1.0)
    before = {p: os.path.getmtime(p) for p in (ckpt, os.path.join(out, "result.json"))}
    trained: list[str] = []

    def fake_train(j, out_dir, **_):  # noqa: ANN001, ANN202
        trained.append(out_dir)
        c = os.path.join(out_dir, "teacher.pt")
        io.write_bytes_atomic(c, b"new")
        record_result(out_dir, j, files={"checkpoint": c}, metrics={"mAP": 0.1}, seconds=2.0)
        return SimpleNamespace(checkpoint=c, metrics={"mAP": 0.1}, seconds=2.0, reused=False)

    new_cfg = load_config(profile="quick", overrides=[f"compute.out_dir={new}", f"compute.reuse_from=[{main}]"])
    paths = Paths.of(new_cfg.compute)
    from oskt.cli.plan_cmd import plan_rows

    row = next(r for r in plan_rows(new_cfg) if r["kind"] == "teacher")  # `oskt plan` says so before the run
    assert row["state"] == "done" and "adopted" in row["changed"][0] and out in row["changed"][0]
    r = train_teacher(job, paths, train=fake_train)
    assert r.reused and trained == [] and r.checkpoint == ckpt and r.metrics["mAP"] == 0.5
    assert reuse(paths.job_dir(job), job) is not None  # adopted: this run's folder now has it as its own
    # nothing in the other root was written or added
    assert {p: os.path.getmtime(p) for p in before} == before
    assert sorted(os.listdir(out)) == ["result.json", "teacher.pt"]
    # another key (a changed recipe) is never adopted: it trains in this run's folder, the main run's stays
    other = teacher_job(load_config(profile="quick", overrides=["teacher.seed=3"]), "synth_a")
    r2 = train_teacher(other, Paths(str(tmp_path / "seed3"), (main,)), train=fake_train)
    assert not r2.reused and trained == [Paths(str(tmp_path / "seed3")).job_dir(other)]
    assert reuse(out, job) is not None and io.read_bytes(ckpt) == b"weights"
