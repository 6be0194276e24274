"""The quick_long profile (issue #19) is quick with a longer fine-tune: same data, teacher, chains and recipe, so its
teacher and chain jobs are quick's and only the student cells differ."""

from __future__ import annotations

import dataclasses

from oskt.config import PROFILES, load_config
from oskt.pipeline.graph import jobs_from_config


def _without_fine_tune_length(cfg_dict: dict) -> dict:
    out = {k: v for k, v in cfg_dict.items() if k != "profile"}
    out["students"] = {k: v for k, v in out["students"].items() if k not in ("epochs", "milestones")}
    return out


def test_quick_long_differs_from_quick_only_in_the_fine_tune_length() -> None:
    assert "quick_long" in PROFILES
    quick, long = load_config(profile="quick"), load_config(profile="quick_long")
    assert _without_fine_tune_length(dataclasses.asdict(long)) == _without_fine_tune_length(dataclasses.asdict(quick))
    assert long.students.epochs > quick.students.epochs
    # the decay at the same share of the run as quick's (3 of 4 epochs)
    share = quick.students.milestones[0] / quick.students.epochs
    assert long.students.milestones == (round(share * long.students.epochs),)


def test_quick_long_reuses_quick_teacher_and_chains_but_not_its_cells() -> None:
    quick, long = jobs_from_config(load_config(profile="quick")), jobs_from_config(load_config(profile="quick_long"))
    assert {s: t.key for s, t in long.teachers.items()} == {s: t.key for s, t in quick.teachers.items()}
    assert {k: c.key for k, c in long.chains.items()} == {k: c.key for k, c in quick.chains.items()}
    assert {c.label for c in long.cells} == {c.label for c in quick.cells}  # the same grid: 7 methods x 3 x 2
    assert not {c.key for c in long.cells} & {c.key for c in quick.cells}
    assert {c.recipe.epochs for c in long.cells} == {load_config(profile="quick_long").students.epochs}
