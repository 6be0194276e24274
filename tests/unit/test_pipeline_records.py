"""Pipeline bookkeeping as plain functions: the grid, fingerprints, the params file and dvc.yaml agreeing."""

from __future__ import annotations

import os

import pytest
import yaml

from oskt.config import dump_config, load_config
from oskt.pipeline.grid import cell_fingerprint, grid_cells
from oskt.pipeline.records import STAGE_PARAMS, GridCell, Paths, fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_grid_is_the_full_product_with_unique_folder_names() -> None:
    cfg = load_config(profile="quick", overrides=["students.seeds=[0,1]", "students.few_shot=[0.5,1.0]"])
    cells = grid_cells(cfg)
    s = cfg.students
    assert len(cells) == len(s.names) * len(s.methods) * len(s.scenarios) * len(s.seeds) * len(s.few_shot)
    assert len({c.name for c in cells}) == len(cells)
    assert {c.method for c in cells} == {"oskt", "scratch", "wtsel", "kdpp", "depgraph"}
    c = GridCell("oskt", "S1", "synth_a->synth_b", seed=1, few_shot=0.5)
    assert (c.source, c.target, c.name) == ("synth_a", "synth_b", "synth_a--synth_b__S1__oskt__seed1__fs0.5")
    assert Paths("out").cell_dir(c) == os.path.join("out", "students", c.name)


def test_cell_fingerprint_ignores_the_grid_lists_and_cosmetics_but_not_the_recipe() -> None:
    base = load_config(profile="smoke")
    cell = grid_cells(base)[0]
    fp = cell_fingerprint(base, cell)
    more_seeds = load_config(profile="smoke", overrides=["students.seeds=[0,1,2]"])
    cosmetic = load_config(profile="smoke", overrides=["train.progress=true", "eval.batch_size=7"])
    assert cell_fingerprint(more_seeds, cell) == fp
    assert cell_fingerprint(cosmetic, cell) == fp
    for change in ["students.epochs=3", "train.lr=0.001", "chain.epochs=2", "baselines.kdpp.temperature=2.0"]:
        assert cell_fingerprint(load_config(profile="smoke", overrides=[change]), cell) != fp, change
    assert cell_fingerprint(base, GridCell(cell.method, cell.student, cell.scenario, seed=9)) != fp


def test_stage_fingerprints_follow_the_params_each_stage_reads() -> None:
    a = load_config(profile="smoke").flat()
    b = load_config(profile="smoke", overrides=["students.epochs=5"]).flat()
    assert fingerprint(a, STAGE_PARAMS["teacher"]) == fingerprint(b, STAGE_PARAMS["teacher"])
    assert fingerprint(a, STAGE_PARAMS["chain"]) == fingerprint(b, STAGE_PARAMS["chain"])
    assert fingerprint(a, STAGE_PARAMS["students"]) != fingerprint(b, STAGE_PARAMS["students"])


def test_params_yaml_is_exactly_the_resolved_quick_profile() -> None:
    with open(os.path.join(ROOT, "params.yaml")) as f:
        text = f.read()
    assert text == dump_config(load_config(profile="quick")), (
        "params.yaml drifted: regenerate with `oskt config init --profile quick -o params.yaml --force`"
    )


def _dvc() -> dict:
    with open(os.path.join(ROOT, "dvc.yaml")) as f:
        return yaml.safe_load(f)["stages"]


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMS))
def test_dvc_stage_lists_exactly_the_params_it_reads(stage: str) -> None:
    st = _dvc()[stage]
    body = st.get("do", st)
    assert tuple(body["params"]) == STAGE_PARAMS[stage]
    assert body["cmd"].startswith(f"python -m oskt.pipeline {stage}")


def test_dvc_fans_out_over_sources_and_chain_widths_from_params() -> None:
    st = _dvc()
    assert st["teacher"]["foreach"] == "${data.sources}"
    assert st["chain"]["matrix"] == {"source": "${data.sources}", "width": "${chain.widths}"}
    students_out = st["students"]["outs"][0]
    assert students_out == {"${compute.out_dir}/students": {"persist": True}}


def test_dvc_repo_files_are_commit_ready() -> None:
    with open(os.path.join(ROOT, ".dvc", "config")) as f:
        config = f.read()
    assert "remote = local" in config and "url = ../dvc-remote" in config
    assert os.path.exists(os.path.join(ROOT, ".dvcignore"))
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "/dvc-remote/" in f.read()


def test_ray_address_precedence_and_cell_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    from oskt.pipeline.engines import cell_options, cell_threads, ray_address, ray_init_kwargs

    compute = load_config(
        profile="smoke",
        overrides=[
            "compute.ray_address=cfg:6379",
            "compute.cpus_per_task=2",
            "compute.gpus_per_task=0.5",
            "compute.max_retries=4",
        ],
    ).compute
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(compute) == "cfg:6379"
    monkeypatch.setenv("RAY_ADDRESS", "env:6379")
    assert ray_address(compute) == "env:6379"
    assert ray_address(compute, "ray://cli:10001") == "ray://cli:10001"
    assert cell_options(compute) == {"num_cpus": 2.0, "num_gpus": 0.5, "max_retries": 4}
    assert cell_threads(compute) == 2
    assert "num_cpus" not in ray_init_kwargs(2, "ray://cli:10001")  # a cluster brings its own resources
    local = ray_init_kwargs(2, None)
    assert local["num_cpus"] == 2 and local["include_dashboard"] is False


def test_local_services_send_no_telemetry_unless_the_user_says_so(monkeypatch) -> None:
    from oskt.pipeline.engines import NO_TELEMETRY_ENV, no_telemetry

    for k in NO_TELEMETRY_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # the user's choice wins
    no_telemetry()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
