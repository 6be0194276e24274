"""ONNX export: eval-mode features, dynamic batch axis, ONNX Runtime parity with PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oskt.deploy.latency import measure_ort_latency, measure_torch_latency
from oskt.deploy.onnx_export import export_onnx, onnx_features
from oskt.errors import SpecError
from oskt.models import ModelSpec, build_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CASES = {
    "resnet": ModelSpec(arch="resnet50", in_planes=8, multipliers=(2, 3, 4), img_size=(64, 32)),
    "vit": ModelSpec(arch="vit_small", dim=36, img_size=(32, 16), drop_path=0.0),
}


def _trained_like(spec: ModelSpec) -> torch.nn.Module:
    model = build_model(spec, 5)
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(2):
            model(torch.randn(4, 3, *spec.img_size) * 2 + 0.5)
    return model


@pytest.mark.parametrize("family", list(CASES))
def test_onnx_round_trip_matches_pytorch(family: str, tmp_path: Path) -> None:
    spec = CASES[family]
    model = _trained_like(spec)
    out = str(tmp_path / "sub" / "model.onnx")
    res = export_onnx(model, out, opset=17)
    assert (
        res.exporter == "legacy"
        and res.opset == 17
        and res.feat_dim == spec.feat_dim
        and res.num_bytes == Path(out).stat().st_size
    )
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    assert model.training  # the caller's mode is restored
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["model.onnx"]  # no temp files left
    model.eval()
    for b in (1, 3):
        x = torch.randn(b, 3, *spec.img_size)
        with torch.no_grad():
            ref = model(x)
        got = onnx_features(out, x)
        assert got.shape == (b, spec.feat_dim)
        assert (got - ref).abs().max().item() < 1e-4


def test_resnet_exports_at_another_size_and_vit_refuses(tmp_path: Path) -> None:
    model = _trained_like(CASES["resnet"])
    res = export_onnx(model, str(tmp_path / "r.onnx"), input_size=(96, 48), batch_sizes=(2,))
    assert res.input_size == (96, 48) and res.max_abs_diff < 1e-4
    ort_ms = measure_ort_latency(res.path, (2, 3, 96, 48), threads=1, warmup=0, runs=2)
    torch_ms = measure_torch_latency(model, (2, 3, 96, 48), threads=1, warmup=0, runs=2)
    assert ort_ms > 0 and torch_ms > 0 and model.training
    with pytest.raises(SpecError, match="position embeddings"):
        export_onnx(build_model(CASES["vit"], 5), str(tmp_path / "v.onnx"), input_size=(64, 32))
    assert not (tmp_path / "v.onnx").exists()
