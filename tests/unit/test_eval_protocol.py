"""Evaluation options on small hand-computed cases: Euclidean distance, flip TTA, AQE, the CUHK03
single-gallery-shot CMC, exact rank-5/10 whatever max_rank, per-query results and top-k lists."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from oskt.config import EvalConfig
from oskt.errors import ConfigError
from oskt.eval import (
    compute_metrics,
    extract_features,
    pairwise_distance,
    query_expansion,
    rank_features,
    rank_queries,
    rerank_distance,
    score_chunks,
)


def angles(a) -> np.ndarray:
    """2-d unit features at the given angles: cosine similarity = cos(angle difference)."""
    a = np.asarray(a, dtype=np.float64)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------- Euclidean distance


def test_euclidean_on_raw_features_hand_computed() -> None:
    # query [1, 0] (pid 1, cam 0); g0 = [10, 1] the true match (cam 1), g1 = [0.5, 0.5] another person.
    # cosine: cos(q, g0) = 10 / sqrt(101) = 0.995 > cos(q, g1) = 0.707 -> the match is first: AP 1.
    # squared Euclidean on the raw features: |q - g0|^2 = 81 + 1 = 82 > |q - g1|^2 = 0.25 + 0.25 = 0.5
    #   -> the match is second: AP 1/2, rank-1 0.
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[10.0, 1.0], [0.5, 0.5]])
    args = ([1], [1, 2], [0], [1, 1])
    torch.testing.assert_close(pairwise_distance(q, g, "euclidean"), torch.tensor([[82.0, 0.5]]))
    torch.testing.assert_close(
        pairwise_distance(q, g, "cosine"), torch.tensor([[1 - 10 / math.sqrt(101), 1 - 0.5 / math.sqrt(0.5)]])
    )
    cos = compute_metrics(q, g, *args, max_rank=2)
    euc = compute_metrics(q, g, *args, max_rank=2, metric="euclidean")
    assert cos.mAP == pytest.approx(1.0) and cos.rank1 == 1.0
    assert euc.mAP == pytest.approx(0.5) and euc.rank1 == 0.0 and euc.cmc == (0.0, 1.0)
    via_cfg = rank_features(q, g, *map(np.asarray, args), EvalConfig(metric="euclidean")).summary(2)
    assert via_cfg == euc


def test_unknown_metric_raises() -> None:
    with pytest.raises(ValueError, match="metric='manhattan'"):
        next(score_chunks(torch.zeros(1, 2), torch.zeros(1, 2), "manhattan"))


# ------------------------------------------------------------------------------------------------- flip TTA


class FirstRow(nn.Module):
    """Feature = the first channel's first row of the image (a model that sees left from right)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x[:, 0, 0, :]


def test_flip_averages_the_mirror_image_hand_computed() -> None:
    img = torch.zeros(2, 3, 1, 3)
    img[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # mirror: [3, 2, 1], mean [2, 2, 2]
    img[1, 0, 0] = torch.tensor([0.0, 0.0, 6.0])  # mirror: [6, 0, 0], mean [3, 0, 3]
    batch = [(img, torch.tensor([5, 6]), torch.tensor([0, 1]))]
    model = FirstRow()
    plain, _, _ = extract_features(model, batch, "cpu")
    flipped, pids, cams = extract_features(model, batch, "cpu", flip=True)
    torch.testing.assert_close(plain, img[:, 0, 0])
    torch.testing.assert_close(flipped, torch.tensor([[2.0, 2.0, 2.0], [3.0, 0.0, 3.0]]))
    assert pids.tolist() == [5, 6] and cams.tolist() == [0, 1] and model.calls == 3


# ------------------------------------------------------------------------------------------------------ AQE


def test_aqe_hand_computed() -> None:
    # all four unit vectors; k = 2 (itself + its nearest), alpha = 3: f' = (f + cos^3 * f_nearest) / 2
    #   q  = [1, 0]:      nearest g0 (cos 0.8)  -> ([1, 0] + 0.512 [0.8, 0.6]) / 2   = [0.7048, 0.1536]
    #   g0 = [0.8, 0.6]:  nearest q (cos 0.8)   -> ([0.8, 0.6] + 0.512 [1, 0]) / 2   = [0.656, 0.3]
    #   g1 = [0, 1]:      nearest g0 (cos 0.6)  -> ([0, 1] + 0.216 [0.8, 0.6]) / 2   = [0.0864, 0.5648]
    #   g2 = [0.6, -0.8]: nearest q (cos 0.6)   -> ([0.6, -0.8] + 0.216 [1, 0]) / 2  = [0.408, -0.4]
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, -0.8]])
    q2, g2 = query_expansion(q, g, "cosine", k=2, alpha=3.0)
    torch.testing.assert_close(q2, torch.tensor([[0.7048, 0.1536]]))
    torch.testing.assert_close(g2, torch.tensor([[0.656, 0.3], [0.0864, 0.5648], [0.408, -0.4]]))
    # euclidean averages the raw features (a query of norm 2): ([2, 0] + 0.512 [0.8, 0.6]) / 2 = [1.2048, 0.1536]
    q3, _ = query_expansion(2 * q, g, "euclidean", k=2, alpha=3.0)
    torch.testing.assert_close(q3, torch.tensor([[1.2048, 0.1536]]))
    # k = 1 is the identity (on the features the metric sees)
    q4, g4 = query_expansion(3 * q, g, "cosine", k=1)
    torch.testing.assert_close(torch.cat([q4, g4]), torch.cat([q, g]))


def test_aqe_in_the_protocol_ranks_the_expanded_features() -> None:
    qf, gf = torch.from_numpy(angles([0.0])), torch.from_numpy(angles([0.5, 0.6, 2.0]))
    labels = (np.array([1]), np.array([2, 1, 3]), np.array([0]), np.array([1, 1, 1]))
    cfg = EvalConfig(aqe=True, aqe_k=2, aqe_alpha=3.0)
    got = rank_features(qf, gf, *labels, cfg).summary(3)
    q2, g2 = query_expansion(qf, gf, "cosine", 2, 3.0)
    assert got == compute_metrics(q2, g2, *labels, max_rank=3)


# ------------------------------------------------------------------------------------ CUHK03 single-gallery-shot


def test_cuhk03_metric_hand_computed() -> None:
    # query pid 1 cam 0 at angle 0; gallery by decreasing similarity:
    #   junk A c0 (0.05, removed), B (0.1), B (0.2), A c1 (0.3), C (0.4), A c1 (0.5), D (0.6), D (0.7)
    # Market rule: hits at ranks 3 and 5 -> AP = (1/3 + 2/5) / 2, CMC = 0, 0, 1, ...
    # single-gallery-shot: B always beats the match, D never; C beats it exactly when the drawn match is the
    #   one at 0.5 (probability 1/2): the rank is 2 or 3 with probability 1/2 each.
    gf = angles([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    g_pids = np.array([1, 2, 2, 1, 3, 1, 4, 4])
    g_cams = np.array([0, 1, 1, 1, 1, 1, 1, 1])
    args = (torch.from_numpy(angles([0.0])), torch.from_numpy(gf), np.array([1]), g_pids, np.array([0]), g_cams)
    market = rank_features(*args, EvalConfig()).summary(5)
    assert market.mAP == pytest.approx((1 / 3 + 2 / 5) / 2) and market.cmc == (0.0, 0.0, 1.0, 1.0, 1.0)
    res = rank_features(*args, EvalConfig(cuhk03_metric=True, cuhk03_repeats=10))
    assert res.single_shot is not None and res.single_shot.shape == (1, 10)
    assert set(res.single_shot[0].tolist()) <= {2, 3}
    m = res.summary(5)
    assert m.mAP == market.mAP and m.mINP == market.mINP  # AP / INP stay the standard ones (torchreid)
    assert m.rank1 == 0.0 and m.cmc[2] == 1.0 and m.cmc[1] == pytest.approx(float((res.single_shot == 2).mean()))
    many = rank_features(*args, EvalConfig(cuhk03_metric=True, cuhk03_repeats=4000)).summary(5)
    assert many.cmc[1] == pytest.approx(0.5, abs=0.04)  # 5 standard deviations
    # seeded: the same call gives the same draws
    again = rank_features(*args, EvalConfig(cuhk03_metric=True, cuhk03_repeats=10))
    np.testing.assert_array_equal(again.single_shot, res.single_shot)


def expected_single_shot_cmc(sim, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Exact expectation of the single-gallery-shot CMC: given the drawn match's score s, each other identity p
    beats it independently with probability (share of p's images scoring >= s); a Poisson-binomial CDF, averaged
    over the uniformly drawn match."""
    cmcs = []
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        matches = sim[i][keep & (g_pids == q_pids[i])]
        if matches.size == 0:
            continue
        others = [sim[i][keep & (g_pids == p)] for p in np.unique(g_pids[keep]) if p != q_pids[i]]
        cmc = np.zeros(max_rank)
        for s in matches:
            dist = np.array([1.0])  # P(number of identities ahead = n)
            for scores in others:
                pr = float((scores >= s).mean())
                dist = np.concatenate([dist * (1 - pr), [0.0]]) + np.concatenate([[0.0], dist * pr])
            cdf = np.cumsum(dist)
            cmc += np.array([cdf[min(r, len(cdf) - 1)] for r in range(max_rank)]) / len(matches)
        cmcs.append(cmc)
    return np.mean(cmcs, axis=0)


def test_cuhk03_metric_matches_its_expectation_and_not_the_chunking() -> None:
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((12, 8)).astype(np.float32), rng.standard_normal((60, 8)).astype(np.float32)
    qp, gp = rng.integers(0, 8, 12), rng.integers(0, 8, 60)
    qc, gc = rng.integers(0, 3, 12), rng.integers(0, 3, 60)
    qn, gn = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    expected = expected_single_shot_cmc(qn @ gn.T, qp, gp, qc, gc, 10)
    cfg = EvalConfig(cuhk03_metric=True, cuhk03_repeats=3000, query_chunk=5)
    res = rank_features(torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, cfg)
    np.testing.assert_allclose(res.summary(10).cmc, expected, atol=0.02)
    other = rank_features(
        torch.from_numpy(qf), torch.from_numpy(gf), qp, gp, qc, gc, dataclasses.replace(cfg, query_chunk=1024)
    )
    np.testing.assert_array_equal(other.single_shot, res.single_shot)


# ------------------------------------------------------------------------------------------- ranks, per query


def test_rank5_and_rank10_are_not_capped_by_max_rank() -> None:
    # five strangers, then the match at rank 6: CMC@3 = 0, CMC@5 = 0, CMC@10 = 1 (used to report CMC@3 = 0)
    gf = angles([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    m = compute_metrics(angles([0.0]), gf, [1], [2, 3, 4, 5, 6, 1], [0], [1] * 6, max_rank=3)
    assert m.cmc == (0.0, 0.0, 0.0) and m.rank1 == 0.0 and m.rank5 == 0.0 and m.rank10 == 1.0
    assert m.mAP == pytest.approx(1 / 6)


def test_per_query_results_and_topk_hand_computed() -> None:
    # the hand case of test_eval_metrics: query 0 hits at ranks 2 and 4 (AP 0.5), query 1 has no valid match,
    # query 2 hits at rank 2 (AP 0.5)
    angles_g = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    g_pids, g_cams = np.array([1, 2, 1, 3, 1, 0]), np.array([0, 1, 1, 2, 2, 3])
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 1, 0])
    qf, gf = torch.from_numpy(angles([-0.05, 1.5, 0.36])), torch.from_numpy(angles(angles_g))
    res = rank_features(qf, gf, q_pids, g_pids, q_cams, g_cams, EvalConfig(), topk=3)
    np.testing.assert_allclose(res.ap, [0.5, np.nan, 0.5])
    np.testing.assert_allclose(res.inp, [0.5, np.nan, 0.5])
    assert res.first_hit.tolist() == [2, 0, 2] and res.num_matches.tolist() == [2, 0, 1]
    assert res.valid.tolist() == [True, False, True]
    # query 0's list leaves out g0 (same pid, same camera): g1, g2, g3; query 1 (pid 2 cam 1) leaves out g1
    assert res.topk_index[0].tolist() == [1, 2, 3]
    assert res.topk_index[1].tolist() == [5, 4, 3]
    assert res.topk_index[2].tolist() == [4, 3, 5]
    np.testing.assert_allclose(res.topk_distance[0], 1 - np.cos(np.array([0.15, 0.25, 0.35])), atol=1e-6)
    m = res.summary(5)
    assert m.num_valid == 2 and m.num_skipped == 1 and m.mAP == pytest.approx(0.5)


def test_topk_pads_a_small_gallery() -> None:
    res = rank_queries([(0, torch.tensor([[0.9, 0.1]]))], [1], [1, 2], [0], [0, 1], topk=4)
    # g0 is same pid and camera (left out): only g1 remains
    assert res.topk_index.tolist() == [[1, -1, -1, -1]] and np.isnan(res.topk_distance[0, 1:]).all()
    assert res.topk_distance[0, 0] == pytest.approx(-0.1)


def test_default_protocol_is_the_old_evaluation() -> None:
    rng = np.random.default_rng(2)
    qf, gf = torch.randn(30, 8), torch.randn(120, 8)
    qp, gp, qc, gc = rng.integers(0, 10, 30), rng.integers(0, 10, 120), rng.integers(0, 3, 30), rng.integers(0, 3, 120)
    assert rank_features(qf, gf, qp, gp, qc, gc, EvalConfig(query_chunk=7)).summary(50) == compute_metrics(
        qf, gf, qp, gp, qc, gc
    )


def test_rerank_in_the_protocol() -> None:
    rng = np.random.default_rng(3)
    qf, gf = torch.randn(10, 6), torch.randn(50, 6)
    qp, gp, qc, gc = rng.integers(0, 6, 10), rng.integers(0, 6, 50), np.zeros(10, int), np.ones(50, int)
    cfg = EvalConfig(rerank=True, rerank_k1=6, rerank_k2=3, rerank_lambda=0.2, query_chunk=4)
    got = rank_features(qf, gf, qp, gp, qc, gc, cfg, topk=2)
    d = rerank_distance(qf, gf, k1=6, k2=3, lambda_value=0.2)
    ref = rank_queries([(0, -d.clone())], qp, gp, qc, gc, topk=2)
    np.testing.assert_allclose(got.ap, ref.ap, atol=1e-12)
    assert got.topk_index.tolist() == ref.topk_index.tolist()
    np.testing.assert_allclose(got.topk_distance, d.sort(1).values[:, :2].numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("metric", "l1", "eval.metric='l1'"),
        ("rerank_lambda", 1.5, "eval.rerank_lambda=1.5"),
        ("rerank_k1", 0, "eval.rerank_k1=0"),
        ("aqe_k", 0, "eval.aqe_k=0"),
        ("cuhk03_repeats", 0, "eval.cuhk03_repeats=0"),
    ],
)
def test_eval_config_rejects_bad_values(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EvalConfig(**{field: value})


def test_eval_config_defaults_keep_todays_behaviour() -> None:
    cfg = EvalConfig()
    assert (cfg.metric, cfg.flip, cfg.aqe, cfg.rerank, cfg.cuhk03_metric) == ("cosine", False, False, False, False)
    assert (cfg.rerank_k1, cfg.rerank_k2, cfg.rerank_lambda, cfg.aqe_k, cfg.aqe_alpha) == (20, 6, 0.3, 5, 3.0)


class Tiny(nn.Module):
    """A small conv feature (not mirror-symmetric), counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).relu().flatten(2).mean(2) + x[:, :, :, : x.shape[3] // 2].mean((1, 2, 3))[:, None]


def test_evaluate_honours_the_eval_section(tiny_synth) -> None:
    from oskt.data import build_test_loader, load_dataset
    from oskt.eval import evaluate, evaluate_dataset

    ds = load_dataset("synth_a", tiny_synth)
    cfg = EvalConfig(batch_size=16, max_rank=5, flip=True, rerank=True, rerank_k1=4, rerank_k2=2, metric="euclidean")
    model = Tiny()
    got = evaluate(model, ds, tiny_synth, cfg, "resnet", "cpu")  # the positional signature the pipeline calls
    batches = sum(-(-len(split) // 16) for split in (ds.query, ds.gallery))
    assert model.calls == 2 * batches  # flip: every batch twice
    qf, qp, qc = extract_features(model, build_test_loader(ds.query, tiny_synth, 16, "resnet"), "cpu", flip=True)
    gf, gp, gc = extract_features(model, build_test_loader(ds.gallery, tiny_synth, 16, "resnet"), "cpu", flip=True)
    assert got == rank_features(qf, gf, qp, gp, qc, gc, cfg).summary(5)
    plain = evaluate(model, ds, tiny_synth, EvalConfig(batch_size=16, max_rank=5), "resnet", "cpu")
    assert plain != got
    full = evaluate_dataset(model, ds, tiny_synth, cfg, "resnet", "cpu", topk=3)
    assert full.metrics == got and full.queries.topk_index.shape == (len(ds.query), 3)
    assert full.settings["rerank_k1"] == 4 and full.settings["flip"] is True and len(full.gallery) == len(ds.gallery)
