"""k-reciprocal re-ranking: the vectorised, chunked implementation against a straightforward loop written from
Zhong et al., CVPR 2017 (sections 3.1-3.4), on random small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oskt.eval.metrics import rank_queries
from oskt.eval.rerank import iter_rerank, rerank_distance


def reference_rerank(qf, gf, metric="cosine", k1=20, k2=6, lam=0.3):
    """One image at a time, full float64 matrices, Python sets: the paper's definitions read literally.

    Conventions of the authors' release that the paper leaves open (see oskt/eval/rerank.py): squared Euclidean
    original distance, each row divided by its maximum; V rows scaled to sum 1; the 2/3 test is strict; k1/2 is
    rounded half to even.
    """
    x = np.concatenate([qf, gf]).astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, q = len(x), len(qf)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, 0.0)
    d = d / d.max(axis=1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def nn(i, k):  # N(i, k): k nearest plus itself
        return list(rank[i, : k + 1])

    def recip(i, k):  # R(i, k), eq. 4
        return [j for j in nn(i, k) if i in nn(j, k)]

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        r_star = set(r)
        for c in r:  # eq. 6-7
            rc = recip(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                r_star |= set(rc)
        idx = sorted(r_star)
        w = np.exp(-d[i, idx])  # eq. 10
        v[i, idx] = w / w.sum()
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])  # eq. 11
    jac = np.zeros((q, n - q))
    for i in range(q):
        for g in range(n - q):
            a, b = v[i], v[q + g]
            jac[i, g] = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()  # eq. 9-12
    return (1 - lam) * jac + lam * d[:q, q:]  # eq. 13


def _clustered(rng, nq, ng, dim, ids):
    """Features with identity structure (a centre per id plus noise), so neighbourhoods are not uniform."""
    centres = rng.standard_normal((ids, dim))
    qp, gp = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf = centres[qp] + 0.7 * rng.standard_normal((nq, dim))
    gf = centres[gp] + 0.7 * rng.standard_normal((ng, dim))
    return qf.astype(np.float32), gf.astype(np.float32), qp, gp


@pytest.mark.parametrize(
    ("seed", "metric", "k1", "k2", "lam"),
    [
        (0, "cosine", 20, 6, 0.3),
        (1, "euclidean", 20, 6, 0.3),
        (2, "cosine", 5, 3, 0.5),
        (3, "euclidean", 7, 1, 0.0),
        (4, "cosine", 4, 9, 1.0),
    ],
)
def test_rerank_equals_reference(seed: int, metric: str, k1: int, k2: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    qf, gf, _, _ = _clustered(rng, 17, 53, 12, 9)
    ref = reference_rerank(qf, gf, metric, k1, k2, lam)
    opts = dict(metric=metric, k1=k1, k2=k2, lambda_value=lam)
    got64 = rerank_distance(torch.from_numpy(qf).double(), torch.from_numpy(gf).double(), **opts)
    np.testing.assert_allclose(got64.numpy(), ref, atol=1e-10, rtol=0)
    # float32 (the default), with small blocks and pair budgets so every chunk boundary is crossed
    got32 = rerank_distance(torch.from_numpy(qf), torch.from_numpy(gf), chunk=5, pair_budget=300, **opts)
    assert got32.dtype == torch.float32 and got32.shape == (17, 53)
    np.testing.assert_allclose(got32.numpy(), ref, atol=1e-6, rtol=0)


def test_rerank_distances_beyond_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # pass 1 caches each row's nearest distances; members of R* beyond them are recomputed from the features
    import oskt.eval.rerank as mod

    recomputed = []
    real = mod._sq_dist_pairs

    def spy(x, x_sq, i, j):
        recomputed.append(i.numel())
        return real(x, x_sq, i, j)

    monkeypatch.setattr(mod, "_CACHED", 1)  # cache only the k1 + 1 nearest
    monkeypatch.setattr(mod, "_sq_dist_pairs", spy)
    rng = np.random.default_rng(11)
    qf, gf, _, _ = _clustered(rng, 15, 60, 10, 8)
    got = rerank_distance(torch.from_numpy(qf).double(), torch.from_numpy(gf).double(), k1=6, k2=4)
    np.testing.assert_allclose(got.numpy(), reference_rerank(qf, gf, k1=6, k2=4), atol=1e-10)
    assert recomputed and recomputed[0] > 0


def test_rerank_uniform_random_and_tiny_gallery() -> None:
    rng = np.random.default_rng(7)
    qf, gf = rng.standard_normal((9, 6)), rng.standard_normal((30, 6))
    got = rerank_distance(torch.from_numpy(qf), torch.from_numpy(gf)).numpy()
    np.testing.assert_allclose(got, reference_rerank(qf, gf), atol=1e-10)
    # k1 and k2 larger than the whole set: neighbourhoods stop at N
    qf, gf = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    np.testing.assert_allclose(
        rerank_distance(torch.from_numpy(qf), torch.from_numpy(gf), k1=20, k2=12).numpy(),
        reference_rerank(qf, gf, k1=20, k2=12),
        atol=1e-10,
    )


def test_iter_rerank_blocks_cover_queries_in_order() -> None:
    rng = np.random.default_rng(1)
    qf, gf, _, _ = _clustered(rng, 23, 40, 8, 6)
    blocks = list(iter_rerank(torch.from_numpy(qf), torch.from_numpy(gf), chunk=4, pair_budget=50))
    assert [s for s, _ in blocks] == list(np.cumsum([0] + [b.shape[0] for _, b in blocks[:-1]]))
    assert sum(b.shape[0] for _, b in blocks) == 23 and all(b.shape[0] <= 4 for _, b in blocks)


def test_rerank_improves_a_clustered_retrieval() -> None:
    # the method's point: on identity-structured features the re-ranked mAP is not worse than the plain one
    rng = np.random.default_rng(5)
    qf, gf, qp, gp = _clustered(rng, 40, 200, 16, 20)
    qc, gc = np.zeros(40, dtype=np.int64), np.ones(200, dtype=np.int64)
    from oskt.eval.distance import score_chunks

    plain = rank_queries(score_chunks(torch.from_numpy(qf), torch.from_numpy(gf)), qp, gp, qc, gc).summary()
    d = rerank_distance(torch.from_numpy(qf), torch.from_numpy(gf))
    rr = rank_queries([(0, -d)], qp, gp, qc, gc).summary()
    assert rr.mAP >= plain.mAP


def test_rerank_bad_options() -> None:
    with pytest.raises(ValueError, match="k1 >= 1"):
        rerank_distance(torch.zeros(2, 3), torch.zeros(4, 3), k1=0)
    with pytest.raises(ValueError, match="lambda"):
        rerank_distance(torch.zeros(2, 3), torch.zeros(4, 3), lambda_value=1.5)
