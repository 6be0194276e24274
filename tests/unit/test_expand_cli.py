"""``oskt expand``: student checkpoints from one or several chain checkpoints; clear errors."""

from __future__ import annotations

import pytest

from oskt.chain import build_chain, save_chain
from oskt.cli import main
from oskt.models import ModelSpec, build_model, load_model

RES_T = ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32))


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("chains")
    teacher = build_model(RES_T, 5)
    return [save_chain(str(d / f"chain{w}.pt"), build_chain(teacher, w)) for w in (2, 4)]


def test_expand_named_and_explicit_widths(tmp_path, chains: list[str], capsys) -> None:
    out = str(tmp_path / "s.pt")
    assert (
        main(
            [
                "expand",
                "--chain",
                chains[0],
                "--chain",
                chains[1],
                "--in-planes",
                "4",
                "--multipliers",
                "2",
                "3",
                "4",
                "-o",
                out,
            ]
        )
        == 0
    )
    model, ckpt = load_model(out, kind="student")
    assert model.spec.planes == (4, 8, 12, 16) and model.spec.img_size == RES_T.img_size
    assert ckpt["extra"]["chain_width"] == 2  # chain 4 has stage-4 planes 32 > 16
    assert "from chain 2" in capsys.readouterr().out
    assert main(["expand", "--chain", chains[1], "--student", "r6-2-4-8", "-o", out]) == 0
    assert load_model(out)[0].spec.in_planes == 6


def test_expand_errors_exit_2(tmp_path, chains: list[str], capsys) -> None:
    out = str(tmp_path / "s.pt")
    assert main(["expand", "--chain", chains[1], "--student", "r2-2-4-8", "-o", out]) == 2
    assert "narrower than every chain" in capsys.readouterr().err
    assert main(["expand", "--chain", chains[1], "--student", "T", "-o", out]) == 2
    assert "wider than the teacher" in capsys.readouterr().err
    assert main(["expand", "--chain", chains[1], "--dim", "48", "-o", out]) == 2
    assert main(["expand", "--chain", str(tmp_path / "missing.pt"), "--student", "S1", "-o", out]) == 2


def test_expand_corrupt_chain_labels_one_error_line_in_a_subprocess(tmp_path) -> None:
    """A chain checkpoint whose labels leave a cluster empty (edited by hand): exit 2, one ``oskt: error:`` line
    naming the partition, no student written."""
    import os
    import subprocess
    import sys

    import torch

    chain = build_chain(build_model(RES_T, 5), 2, init="random")
    chain.label("stem").fill_(0)
    path = save_chain(str(tmp_path / "bad.pt"), chain)
    out = tmp_path / "s.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "oskt", "expand", "--chain", path, "--student", "r3-2-4-8", "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("oskt: error:"), r.stderr
    assert "labels of stem" in lines[0] and "non-empty" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]
    assert torch.load(path, weights_only=True)  # the chain checkpoint itself is untouched and loadable
