"""Ranked-result pictures, the worst-queries grid, metrics.json / per-query CSV and tracker logging."""

from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oskt.data.records import ImageRecord
from oskt.eval import EvalResult, QueryResults, format_table, log_evaluation, per_query_csv, write_evaluation
from oskt.eval.visrank import (
    CELL,
    MATCH,
    QUERY,
    WRONG,
    grid_picture,
    query_picture,
    worst_queries,
    worst_queries_grid,
)
from oskt.tracking import MemoryTracker

CELL_W = CELL[1] + 8  # image + 2 borders of 4 px
GAP = 12


def _image(path, colour) -> str:
    Image.new("RGB", (16, 32), colour).save(path)
    return str(path)


@pytest.fixture
def result(tmp_path) -> EvalResult:
    """Two queries (pid 1 cam 0, pid 2 cam 0) over four gallery images; query 0's list: match, stranger, match;
    query 1's: stranger, stranger, match. Query 1 has the lower AP."""
    colours = [(10, 20, 30), (40, 50, 60), (200, 200, 0), (0, 200, 200), (90, 0, 90), (250, 250, 250)]
    paths = [_image(tmp_path / f"im{i}.png", c) for i, c in enumerate(colours)]
    query = [ImageRecord(paths[0], 1, 0), ImageRecord(paths[1], 2, 0)]
    gallery = [
        ImageRecord(paths[2], 1, 1),
        ImageRecord(paths[3], 3, 1),
        ImageRecord(paths[4], 1, 2),
        ImageRecord(paths[5], 2, 1),
    ]
    queries = QueryResults(
        ap=np.array([(1 + 2 / 3) / 2, 1 / 3]),
        inp=np.array([2 / 3, 1 / 3]),
        first_hit=np.array([1, 3]),
        num_matches=np.array([2, 1]),
        topk_index=np.array([[0, 1, 2], [1, 0, 3]]),
        topk_distance=np.array([[0.1, 0.2, 0.3], [0.15, 0.25, 0.35]], dtype=np.float32),
    )
    from oskt.eval.metrics import ReIDMetrics

    m = queries.summary(3)
    assert isinstance(m, ReIDMetrics)
    return EvalResult(m, queries, query, gallery, {"metric": "cosine"}, 0.5)


def _px(img: Image.Image, cell: int, dx: int = 1, dy: int = 1) -> tuple[int, int, int]:
    x = cell * CELL_W + (GAP if cell else 0) + dx
    return img.getpixel((x, dy))


def test_query_picture_borders_and_content(result: EvalResult) -> None:
    img = query_picture(result, 0, k=3)
    assert img.size == (4 * CELL_W + GAP, CELL[0] + 8 + 26)
    assert _px(img, 0) == QUERY
    assert [_px(img, c) for c in (1, 2, 3)] == [MATCH, WRONG, MATCH]  # pid 1 cam 1, pid 3, pid 1 cam 2
    # the image itself sits inside the border (centre of the cell)
    assert _px(img, 1, CELL_W // 2, CELL[0] // 2) == (200, 200, 0)
    img1 = query_picture(result, 1, k=2)  # fewer cells when asked for fewer
    assert img1.size[0] == 3 * CELL_W + GAP and [_px(img1, c) for c in (1, 2)] == [WRONG, WRONG]


def test_grid_and_worst_queries(result: EvalResult) -> None:
    assert worst_queries(result, 8) == [1, 0]
    grid = worst_queries_grid(result, n=1, k=3)
    one = query_picture(result, 1, k=3)
    assert grid.size[0] == one.size[0] and grid.size[1] == 18 + one.size[1] + 6  # title + one row
    two = grid_picture(result, [0, 1], k=3)
    assert two.size[1] == 2 * (one.size[1] + 6)
    with pytest.raises(ValueError, match="topk >= 5"):
        query_picture(result, 0, k=5)


def test_write_evaluation_and_tracker(result: EvalResult, tmp_path) -> None:
    out = str(tmp_path / "out")
    files = write_evaluation(result, out, info={"checkpoint": "s.pt"}, visrank=3)
    payload = json.loads(Path(files.metrics).read_text())
    assert payload["checkpoint"] == "s.pt" and payload["protocol"] == {"metric": "cosine"}
    assert payload["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2) and payload["num_query"] == 2
    rows = list(csv.DictReader(_io.StringIO(Path(files.per_query).read_text())))
    assert [r["first_match_rank"] for r in rows] == ["1", "3"] and rows[1]["top1_pid"] == "3"
    assert float(rows[0]["ap"]) == pytest.approx(5 / 6) and rows[0]["top1_distance"] == "0.100000"
    assert len(files.visrank) == 2 and all(p.endswith(".png") for p in files.visrank)
    assert Image.open(files.visrank[0]).size == query_picture(result, 0, 3).size
    assert files.worst and Image.open(files.worst).size[1] > 2 * CELL[0]
    tracker = MemoryTracker()
    log_evaluation(tracker, result, files, {"checkpoint": "s.pt"})
    assert tracker.params["eval.metric"] == "cosine" and tracker.params["checkpoint"] == "s.pt"
    assert tracker.history("eval/mAP") == [pytest.approx(payload["mAP"])]
    logged = [p for p, _ in tracker.artifacts]
    assert logged[:3] == [files.metrics, files.per_query, files.worst]
    assert [a for _, a in tracker.artifacts[3:]] == ["visrank", "visrank"]


def test_skipped_query_in_csv_and_table(result: EvalResult) -> None:
    q = result.queries
    skipped = QueryResults(
        ap=np.array([q.ap[0], np.nan]),
        inp=np.array([q.inp[0], np.nan]),
        first_hit=np.array([1, 0]),
        num_matches=np.array([2, 0]),
        topk_index=q.topk_index,
        topk_distance=q.topk_distance,
    )
    r = EvalResult(skipped.summary(3), skipped, result.query, result.gallery)
    rows = list(csv.DictReader(_io.StringIO(per_query_csv(r))))
    assert rows[1]["ap"] == "" and rows[1]["first_match_rank"] == "" and rows[1]["num_matches"] == "0"
    table = format_table(r)
    assert "83.33" in table and "1 without a true match skipped" in table
