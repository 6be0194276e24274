"""``oskt data make`` / ``oskt data info``."""

from __future__ import annotations

from pathlib import Path

import pytest

from oskt.cli import main

SMALL = [
    "--profile",
    "smoke",
    "--set",
    "data.synthetic={train_ids: 4, test_ids: 3, images_per_id: 4, height: 32, width: 16, seed: 0}",
]


def test_make_and_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    root = ["--set", f"data.root={tmp_path / 'd'}"]
    assert main(["data", "make", *SMALL, *root, "--dataset", "synth_b"]) == 0
    assert "synth_b: generated domain b" in capsys.readouterr().out
    assert (tmp_path / "d" / "synth_b" / "dataset.json").exists() and not (tmp_path / "d" / "synth_a").exists()
    assert main(["data", "make", *SMALL, *root]) == 0
    out = capsys.readouterr().out
    assert "synth_a: generated" in out and "synth_b: up to date" in out
    assert main(["data", "make", *SMALL, *root, "--dataset", "synth_b", "--force"]) == 0
    assert "synth_b: generated" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "d" / "synth_a")]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "query" in out and "gallery" in out
    assert main(["data", "info", str(tmp_path / "d" / "synth_a"), "--layout", "msmt17"]) == 2
    assert "MSMT17_V1 layout: missing list_train.txt" in capsys.readouterr().err
    assert main(["data", "make", *SMALL, *root, "--dataset", "market1501"]) == 2
    assert "only synthetic" in capsys.readouterr().err
