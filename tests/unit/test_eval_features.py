"""Feature extraction and end-to-end evaluate() with a tiny stand-in model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from oskt.config import DataConfig, EvalConfig
from oskt.data import build_test_loader, load_dataset
from oskt.eval import ReIDMetrics, evaluate, extract_features


class TinyReID(nn.Module):
    """Stand-in for a ReIDModel: eval mode returns the retrieval feature [B, D]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.neck_feat = "before"
        self.seen_neck: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not self.training
        self.seen_neck.append(self.neck_feat)
        f = self.conv(x).relu().mean((2, 3))
        return self.bn(f) if self.neck_feat == "after" else f


def test_extract_features_restores_mode(tiny_synth: DataConfig) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    model = TinyReID().train()
    feats, pids, cams = extract_features(model, build_test_loader(ds.gallery, tiny_synth, 7, "resnet"), "cpu")
    assert feats.shape == (len(ds.gallery), 8) and feats.dtype == torch.float32
    assert pids.tolist() == [r.pid for r in ds.gallery] and cams.dtype == np.int64
    assert model.training  # restored


@pytest.mark.parametrize(("family", "neck"), [("resnet", "after"), ("vit", "before")])
def test_evaluate_tiny(tiny_synth: DataConfig, family: str, neck: str) -> None:
    ds = load_dataset("synth_a", tiny_synth)
    model = TinyReID()
    m = evaluate(model, ds, tiny_synth, EvalConfig(batch_size=16, query_chunk=3, max_rank=10), family, "cpu")
    assert isinstance(m, ReIDMetrics)
    assert 0.0 < m.mAP <= 1.0 and 0.0 <= m.mINP <= 1.0 and len(m.cmc) == 10
    assert m.num_valid + m.num_skipped == len(ds.query) and m.num_valid > 0
    assert set(model.seen_neck) == {neck} and model.neck_feat == "before"  # auto per family, then restored
    assert m.scalars("test/")["test/mAP"] == m.mAP and m.to_dict()["cmc"] == list(m.cmc)
