"""``oskt pick`` / ``oskt export`` end to end on a tiny chain, and their error paths (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oskt.chain import build_chain, save_chain
from oskt.cli import main
from oskt.models import ModelSpec, build_model, load_model

TEACHER = ModelSpec(arch="resnet50", in_planes=16, multipliers=(2, 4, 8), img_size=(64, 32))


@pytest.fixture(scope="module")
def chain_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("chain") / "chain8.pt")
    save_chain(path, build_chain(build_model(TEACHER, 5), 8))
    return path


def test_pick_then_export(chain_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    student = str(tmp_path / "student.pt")
    assert main(["pick", "--chain", chain_file, "--max-params", "0.5M", "--max-macs", "8M", "-o", student]) == 0
    text = capsys.readouterr().out
    assert text.startswith("picked ") and f"wrote {student}" in text
    model, _ = load_model(student, kind="student")
    assert sum(p.numel() for p in model.backbone.parameters()) <= 5e5
    onnx = str(tmp_path / "student.onnx")
    assert main(["export", "--format", "onnx", "--checkpoint", student, "-o", onnx, "--opset", "17"]) == 0
    assert "legacy exporter" in capsys.readouterr().out and Path(onnx).is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pick", "--chain", "{chain}", "-o", "{out}"], "no budget"),
        (["pick", "--max-params", "1M", "-o", "{out}"], "no chain given"),
        (["pick", "--chain", "{chain}", "--max-params", "1k", "-o", "{out}"], "smallest achievable is 0.374M params"),
        (["pick", "--chain", "{chain}", "--max-params", "many", "-o", "{out}"], "not a count"),
        (["pick", "--chain", "{missing}", "--max-params", "1M", "-o", "{out}"], "does not exist"),
        (["pick", "--chain", "{chain}", "--max-latency-ms", "-1", "-o", "{out}"], "must be positive"),
        (["export", "--checkpoint", "{missing}", "-o", "{out}"], "does not exist"),
        (["export", "--checkpoint", "{chain}", "-o", "{out}"], "no 'head.classifier.weight'"),
    ],
)
def test_error_paths_exit_2(
    argv: list[str], message: str, chain_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {"chain": chain_file, "out": str(tmp_path / "out.x"), "missing": str(tmp_path / "nope.pt")}
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oskt: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.x").exists()
