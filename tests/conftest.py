"""Shared fixtures: fixed seeds, no network, nothing written outside tmp_path."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

# Never reach a hub or a tracking service from tests; keep the orchestration stack quiet and local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------- tiny synthetic ReID data


TINY_SYNTH = {"train_ids": 8, "test_ids": 6, "images_per_id": 6, "height": 64, "width": 32, "seed": 0}


@pytest.fixture(scope="session")
def _tiny_synth_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Both synthetic domains (``synth_a``, ``synth_b``), tiny, generated once per test session."""
    from oskt.config import SynthConfig
    from oskt.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny_synth")
    synth = SynthConfig(**TINY_SYNTH)
    make_synthetic(str(root / "synth_a"), synth, "a")
    make_synthetic(str(root / "synth_b"), synth, "b")
    return str(root)


def _tiny_data_config(root: str, source: str):
    from oskt.config import DataConfig, SynthConfig

    return DataConfig(
        root=root, sources=(source,), height=32, width=16, synthetic=SynthConfig(**TINY_SYNTH), num_workers=0
    )


@pytest.fixture(scope="session")
def tiny_synth(_tiny_synth_root: str):
    """DataConfig over a tiny synthetic set (8 train / 6 test ids, 6 images each, stored 64x32, input 32x16),
    sources ['synth_a']; ``synth_b`` (domain b) lives under the same root for cross-domain tests."""
    return _tiny_data_config(_tiny_synth_root, "synth_a")


@pytest.fixture(scope="session")
def tiny_synth_b(_tiny_synth_root: str):
    """Like ``tiny_synth`` but with sources ['synth_b'] (domain b); ``synth_a`` is under the same root."""
    return _tiny_data_config(_tiny_synth_root, "synth_b")
