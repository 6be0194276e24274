"""The real grid cell (oskt.pipeline.cell) on a tiny synthetic set: a cell's result depends on its seed only."""

from __future__ import annotations

import pytest
import torch

from oskt.checkpoint import load_checkpoint
from oskt.config import load_config
from oskt.data import make_synthetic
from oskt.jobs import RunOptions
from oskt.pipeline import jobs_from_config
from oskt.pipeline.cell import INIT_FILE, train_cell
from oskt.pipeline.records import Paths
from oskt.tracking import NullTracker
from oskt.train import refine_chain, train_teacher
from oskt.train.api import CHAIN_FILE, TEACHER_FILE

pytestmark = pytest.mark.slow


def test_a_cell_is_the_same_whatever_its_worker_ran_before(tmp_path) -> None:
    """Fresh heads and Scratch weights come from the cell's seed: two runs of a cell in processes whose global RNG
    state differs (a Ray worker that ran other cells first) give the same init and the same student."""
    cfg = load_config(
        profile="smoke",
        overrides=[
            f"data.root={tmp_path}/data",
            f"compute.out_dir={tmp_path}/out",
            "students.names=[S1]",
            "students.methods=[oskt,scratch]",
            "students.scenarios=[synth_a->synth_a]",
            "compute.device=cpu",
        ],
    )
    make_synthetic(f"{tmp_path}/data/synth_a", cfg.data.synthetic, "a")
    paths, run, g = Paths(cfg.compute.out_dir), RunOptions(device="cpu"), jobs_from_config(cfg)
    t = train_teacher(g.teachers["synth_a"], paths.teacher_dir("synth_a"), run=run)
    assert t.checkpoint.endswith(TEACHER_FILE)
    c = refine_chain(g.chains[("synth_a", 8)], t.checkpoint, paths.chain_dir("synth_a", 8), run=run)
    assert c.checkpoint.endswith(CHAIN_FILE)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cell in g.cells:
            runs = []
            for i, burn in enumerate((0, 7)):
                torch.manual_seed(1234)
                torch.rand(burn)  # a different global RNG state, as another cell run before would leave
                out = str(tmp_path / f"{cell.label}-{i}")
                ckpt, metrics = train_cell(cell, paths, out, NullTracker(), run)
                runs.append((load_checkpoint(f"{out}/init/{INIT_FILE}")["state_dict"], metrics))
            (a, ma), (b, mb) = runs
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), cell.method
            assert ma["mAP"] == mb["mAP"], cell.method
    finally:
        torch.set_num_threads(n)
