"""Metrics: hand-computed cases and parity of the fast counting implementation with a slow argsort reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oskt.eval.metrics import ReIDMetrics, _negatives_ahead_broadcast, compute_metrics


def reference_metrics(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """Obviously-correct torchreid-style loop: sort each row, drop same-pid-same-camera, accumulate."""
    qf = np.asarray(qf, dtype=np.float64)
    gf = np.asarray(gf, dtype=np.float64)
    qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = 1.0 - qf @ gf.T
    aps, inps, cmcs = [], [], []
    for i in range(len(q_pids)):
        matches = (g_pids == q_pids[i]).astype(int)
        order = np.lexsort((matches, dist[i]))  # by distance; a negative tied with a match goes first
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        hits = matches[order][keep]
        if hits.sum() == 0:
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])
        cmcs.append(cmc[:max_rank])
        precisions = [(j + 1) / (pos + 1) for j, pos in enumerate(np.flatnonzero(hits))]
        aps.append(np.mean(precisions))
        inps.append(hits.sum() / (np.flatnonzero(hits)[-1] + 1))
    cmc = np.mean(cmcs, axis=0)
    return dict(mAP=np.mean(aps), mINP=np.mean(inps), cmc=cmc, num_valid=len(aps), num_skipped=len(q_pids) - len(aps))


def test_hand_computed_case() -> None:
    # 1-D "features" via angles: similarity to query = cos(angle difference); gallery ordered by angle.
    # Query 0: pid 1 cam 0. Gallery by decreasing similarity:
    #   g0 pid1 cam0 (junk, removed), g1 pid2, g2 pid1 cam1 (hit), g3 pid3, g4 pid1 cam2 (hit), g5 pid0 distractor
    #   kept ranking: pid2, HIT, pid3, HIT, pid0 -> hits at ranks 2 and 4
    #   AP = (1/2 + 2/4) / 2 = 0.5; first hit rank 2; INP = 2 / 4 = 0.5
    # Query 1: pid 2 cam 1. Its only other pid-2 image g1 is also cam 1 -> removed -> no valid match, skipped.
    # Query 2: pid 3 cam 0, gallery g3 is pid 3 cam 2: rank by angle from query 2.
    angles_g = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    g_pids = np.array([1, 2, 1, 3, 1, 0])
    g_cams = np.array([0, 1, 1, 2, 2, 3])
    angles_q = np.array([-0.05, 1.5, 0.36])
    # query 2 at 0.36: distances |0.36 - g| -> g4 (0.04), g3 (0.06), g5 (0.14), g2 (0.16), ...
    #   kept ranking: pid1, HIT(pid3) -> hit at rank 2: AP = 1/2, INP = 1/2, first hit rank 2
    q_pids = np.array([1, 2, 3])
    q_cams = np.array([0, 1, 0])

    def feat(a):
        return np.stack([np.cos(a), np.sin(a)], axis=1)

    m = compute_metrics(feat(angles_q), feat(angles_g), q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert isinstance(m, ReIDMetrics)
    assert m.num_valid == 2 and m.num_skipped == 1
    assert m.mAP == pytest.approx(0.5)
    assert m.mINP == pytest.approx(0.5)
    assert m.rank1 == pytest.approx(0.0)
    assert m.cmc == pytest.approx((0.0, 1.0, 1.0, 1.0, 1.0))
    assert m.rank5 == pytest.approx(1.0) and m.rank10 == pytest.approx(1.0)


def test_hand_computed_perfect_and_partial() -> None:
    # Query pid 7 cam 0; gallery: hit, neg, hit, neg, neg (ranks by decreasing similarity), hits at 1 and 3:
    #   AP = (1/1 + 2/3) / 2 = 5/6, rank1 = 1, INP = 2/3
    angles_g = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    g_pids = np.array([7, 8, 7, 9, 9])
    g_cams = np.array([1, 0, 2, 0, 0])
    f = lambda a: np.stack([np.cos(a), np.sin(a)], axis=1)  # noqa: E731
    m = compute_metrics(f(np.array([0.0])), f(angles_g), [7], g_pids, [0], g_cams, max_rank=3)
    assert m.mAP == pytest.approx(5 / 6)
    assert m.mINP == pytest.approx(2 / 3)
    assert m.cmc == pytest.approx((1.0, 1.0, 1.0))


def test_no_valid_query() -> None:
    m = compute_metrics(np.eye(2), np.eye(2), [1, 2], [1, 2], [0, 0], [0, 0])
    assert m.num_valid == 0 and m.num_skipped == 2 and m.mAP == 0.0


def _random_problem(rng, nq=60, ng=300, d=16, n_ids=25, n_cams=4):
    qf = rng.standard_normal((nq, d)).astype(np.float32)
    gf = rng.standard_normal((ng, d)).astype(np.float32)
    q_pids = rng.integers(1, n_ids, nq)
    g_pids = rng.integers(0, n_ids, ng)
    return qf, gf, q_pids, g_pids, rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1024])
def test_parity_with_reference(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    args = _random_problem(rng)
    ref = reference_metrics(*args, max_rank=20)
    got = compute_metrics(*args, max_rank=20, query_chunk=chunk)
    assert got.num_valid == ref["num_valid"] and got.num_skipped == ref["num_skipped"]
    assert got.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    assert got.mINP == pytest.approx(ref["mINP"], abs=1e-6)
    np.testing.assert_allclose(got.cmc, ref["cmc"], atol=1e-6)


def test_parity_torch_inputs_and_broadcast_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    qf, gf, qp, gp, qc, gc = _random_problem(rng, nq=40, ng=200)
    ref = reference_metrics(qf, gf, qp, gp, qc, gc)
    got = compute_metrics(torch.from_numpy(qf), torch.from_numpy(gf), torch.from_numpy(qp), gp, qc, gc)
    assert got.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    # the GPU path's vectorised counter must agree with the CPU row-wise one
    import oskt.eval.metrics as mod

    monkeypatch.setattr(
        mod,
        "_negatives_ahead_rowwise",
        lambda sim, pad, counts: _negatives_ahead_broadcast(torch.from_numpy(sim), torch.from_numpy(pad)).numpy(),
    )
    got2 = compute_metrics(qf, gf, qp, gp, qc, gc, query_chunk=9)
    assert got2.mAP == pytest.approx(ref["mAP"], abs=1e-6)
    assert got2.mINP == pytest.approx(ref["mINP"], abs=1e-6)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        compute_metrics(np.eye(3), np.eye(3), [1, 2], [1, 2, 3], [0, 0, 0], [0, 0, 0])
