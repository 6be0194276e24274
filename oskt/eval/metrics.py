"""Retrieval metrics under the standard ReID rule (Market-1501 / torchreid / fast-reid).

For each query, gallery images with the same person id *and* the same camera are removed; the remaining gallery
images with the same id are the true matches, everything else (other ids, distractors) is a negative. A query
with no true match left is skipped and counted.

Speed: instead of sorting every query row (an argsort costs about 3x the distance GEMM at Market size), the rank of
each true match is obtained by *counting* the negatives at least as similar as it. With the ``m`` matches of a row
sorted by similarity, the 1-based rank of the k-th best match is ``k + N_k`` where ``N_k`` is the number of
negatives with similarity >= that match's. AP, CMC and mINP follow exactly from these ranks. Queries are processed
in chunks so that MSMT17-sized problems (11,659 x 82,161) never hold the full distance matrix.

The ranking core (:func:`rank_queries`) takes the query x gallery *scores* chunk by chunk (larger = closer: a
cosine similarity, a negated Euclidean or re-ranked distance, see :mod:`oskt.eval.distance`) and returns per-query
results (:class:`QueryResults`: AP, INP, rank of the first match, the top-k list for pictures, the CUHK03
single-gallery-shot ranks); :meth:`QueryResults.summary` averages them into :class:`ReIDMetrics`.

Ties between a match and a negative count against the query (the negative is ranked first); features from a
network practically never tie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from oskt.eval.distance import l2_normalize, score_chunks

log = logging.getLogger(__name__)

__all__ = ["QueryResults", "ReIDMetrics", "compute_metrics", "l2_normalize", "rank_queries"]

HEADLINE_RANKS = (1, 5, 10)
"""The CMC ranks every ReID paper reports (``rank1``, ``rank5``, ``rank10``)."""


@dataclass(frozen=True)
class ReIDMetrics:
    """Retrieval metrics; every value is a fraction in [0, 1].

    Attributes:
        mAP: mean average precision over valid queries.
        mINP: mean inverse negative penalty (hits / rank of the last hit), fast-reid's definition.
        rank1: CMC at rank 1.
        rank5: CMC at rank 5 (computed exactly, whatever the length of ``cmc``).
        rank10: CMC at rank 10 (computed exactly, whatever the length of ``cmc``).
        cmc: CMC curve for ranks 1..max_rank.
        num_valid: queries that had at least one true match.
        num_skipped: queries skipped because no true match remained.
    """

    mAP: float
    mINP: float
    rank1: float
    rank5: float
    rank10: float
    cmc: tuple[float, ...]
    num_valid: int
    num_skipped: int

    def to_dict(self) -> dict[str, float | int | list[float]]:
        """Plain mapping (the ``cmc`` tuple becomes a list) for JSON and trackers."""
        d = asdict(self)
        d["cmc"] = list(self.cmc)
        return d

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """The headline numbers, e.g. ``{"mAP": 0.71, "rank1": 0.88, ...}``, for ``Tracker.log_metrics``."""
        keys = ("mAP", "mINP", "rank1", "rank5", "rank10")
        return {f"{prefix}{k}": float(getattr(self, k)) for k in keys}


@dataclass(frozen=True)
class QueryResults:
    """Per-query outcome of one ranking (what the per-query CSV and the ranked-result pictures show).

    Attributes:
        ap: average precision per query (float64 ``[Q]``; NaN for a skipped query).
        inp: inverse negative penalty per query (NaN for a skipped query).
        first_hit: 1-based rank of the best true match (int64 ``[Q]``; 0 for a skipped query).
        num_matches: true matches per query (same pid, other camera).
        topk_index: gallery indices of the ``K`` nearest kept gallery images, nearest first (int64 ``[Q, K]``;
            same-pid-same-camera entries are left out as in the metric; -1 pads a gallery with fewer kept
            entries). ``K = 0`` unless asked for.
        topk_distance: their distances (float32 ``[Q, K]``; NaN pads).
        single_shot: CUHK03 single-gallery-shot ranks of the match, one per repeat (int64 ``[Q, R]``; 0 for a
            skipped query), or None when that metric was not asked for.
    """

    ap: np.ndarray
    inp: np.ndarray
    first_hit: np.ndarray
    num_matches: np.ndarray
    topk_index: np.ndarray
    topk_distance: np.ndarray
    single_shot: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """Boolean ``[Q]``: queries with at least one true match."""
        return self.first_hit > 0

    def cmc_at(self, rank: int) -> float:
        """CMC at ``rank`` (any rank >= 1, never capped): the fraction of valid queries whose best match is within
        ``rank`` (averaged over the single-shot repeats when present)."""
        if rank < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        valid = self.valid
        if not valid.any():
            return 0.0
        if self.single_shot is not None:
            return float((self.single_shot[valid] <= rank).mean())
        return float((self.first_hit[valid] <= rank).mean())

    def summary(self, max_rank: int = 50) -> ReIDMetrics:
        """Averages over valid queries: mAP, mINP, the CMC curve 1..``max_rank`` and ranks 1 / 5 / 10.

        The headline ranks are computed from the per-query ranks, so ``rank10`` is CMC@10 even when
        ``max_rank`` < 10 (older code reported CMC@max_rank there).
        """
        if max_rank < 1:
            raise ValueError(f"max_rank={max_rank} must be >= 1")
        valid = self.valid
        num_valid = int(valid.sum())
        num_skipped = len(valid) - num_valid
        if num_valid == 0:
            log.warning("no query has a valid match: all metrics are 0")
            return ReIDMetrics(0.0, 0.0, 0.0, 0.0, 0.0, tuple(0.0 for _ in range(max_rank)), 0, num_skipped)
        ranks = self.single_shot[valid] if self.single_shot is not None else self.first_hit[valid]
        hist = np.bincount(np.minimum(ranks.ravel(), max_rank + 1) - 1, minlength=max_rank + 1)
        cmc = tuple(float(c) for c in np.cumsum(hist[:max_rank]) / ranks.size)
        r1, r5, r10 = (self.cmc_at(r) for r in HEADLINE_RANKS)
        return ReIDMetrics(
            mAP=float(self.ap[valid].mean()),
            mINP=float(self.inp[valid].mean()),
            rank1=r1,
            rank5=r5,
            rank10=r10,
            cmc=cmc,
            num_valid=num_valid,
            num_skipped=num_skipped,
        )


def _as_tensor(x: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def _as_ids(x: np.ndarray | torch.Tensor | list[int]) -> np.ndarray:
    return np.asarray(_as_tensor(x).cpu(), dtype=np.int64)


def _negatives_ahead_rowwise(sim: np.ndarray, pos_pad: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """CPU: ``[C, Pmax]`` counts of entries >= each row's (ascending) match similarities.

    One ``count_nonzero(row >= a)`` per match: a branch-free SIMD pass over a row that stays in cache, which on
    CPU is several times faster than ``searchsorted`` / ``bucketize`` into the matches and needs no temporary.
    """
    out = np.zeros(pos_pad.shape, dtype=np.int64)
    for i in np.flatnonzero(counts):
        row = sim[i]
        for j in range(int(counts[i])):
            out[i, j] = np.count_nonzero(row >= pos_pad[i, j])
    return out


def _negatives_ahead_broadcast(sim: torch.Tensor, pos_pad: torch.Tensor, sub: int = 16) -> torch.Tensor:
    """Vectorised variant (GPU): ``[C, Pmax]`` counts of entries >= each padded threshold (+inf pads count 0)."""
    out = torch.empty(pos_pad.shape, dtype=torch.int64, device=sim.device)
    for s in range(0, sim.shape[0], sub):
        out[s : s + sub] = (sim[s : s + sub].unsqueeze(1) >= pos_pad[s : s + sub].unsqueeze(2)).sum(-1)
    return out


def _pairs_by_pid(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every query, the gallery indices sharing its pid, as CSR (``indptr`` over queries, ``indices``).

    Returns (indptr, gallery indices, query index per pair). Done once with a sort of the gallery pids, so no
    [Q, G] comparison is ever built.
    """
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    lo = np.searchsorted(sorted_pids, q_pids, side="left")
    hi = np.searchsorted(sorted_pids, q_pids, side="right")
    counts = hi - lo
    indptr = np.zeros(len(q_pids) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    qidx = np.repeat(np.arange(len(q_pids)), counts)
    # position inside each query's run, then map into the sorted gallery
    within = np.arange(indptr[-1]) - indptr[qidx]
    gidx = order[lo[qidx] + within]
    return indptr, gidx, qidx


class _SingleShot:
    """CUHK03 "classic" single-gallery-shot CMC (torchreid ``eval_cuhk03``; BASELINES.md §3.1).

    Per query and repeat, one gallery image of every identity is drawn at random (for the query's own identity:
    one of its true matches, the same-camera images being removed first); the match's rank is 1 + the drawn
    images of other identities scoring at least as high. Draws come from one seeded NumPy stream in query order,
    ``[C, repeats, identities + 1]`` uniforms per chunk, so the result does not depend on the chunk size.
    """

    def __init__(self, g_pids: np.ndarray, repeats: int, seed: int, device: torch.device) -> None:
        order = np.argsort(g_pids, kind="stable")
        _, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
        self.order = torch.as_tensor(order, device=device)
        self.starts = torch.as_tensor(starts, device=device)
        self.counts = torch.as_tensor(counts, device=device)
        self.repeats = repeats
        self.rng = np.random.default_rng(seed)
        self.device = device

    def ranks(self, masked: torch.Tensor, pad: torch.Tensor, m: torch.Tensor, sub: int = 64) -> torch.Tensor:
        """``[C, repeats]`` ranks; ``masked`` has every same-pid entry at -inf (so the query's own identity never
        counts against its match), ``pad`` the ascending match scores (+inf pads), ``m`` the match counts."""
        c, ids = masked.shape[0], len(self.starts)
        u = torch.as_tensor(self.rng.random((c, self.repeats, ids + 1)), device=self.device)
        out = torch.zeros(c, self.repeats, dtype=torch.int64, device=self.device)
        for s in range(0, c, sub):
            uu = u[s : s + sub]
            pick = self.starts + (uu[..., :ids] * self.counts).long().clamp_max(self.counts - 1)
            drawn = masked[s : s + sub].gather(1, self.order[pick].flatten(1)).view(pick.shape)
            mm = m[s : s + sub]
            j = (uu[..., ids] * mm.unsqueeze(1)).long().clamp_max((mm - 1).clamp_min(0).unsqueeze(1))
            own = pad[s : s + sub].gather(1, j)  # [c, repeats]: the drawn true match
            out[s : s + sub] = 1 + (drawn >= own.unsqueeze(2)).sum(2)
        return torch.where(m.unsqueeze(1) > 0, out, torch.zeros_like(out))


def rank_queries(
    score_chunks: Iterable[tuple[int, torch.Tensor]],
    q_pids: np.ndarray | torch.Tensor | list[int],
    g_pids: np.ndarray | torch.Tensor | list[int],
    q_camids: np.ndarray | torch.Tensor | list[int],
    g_camids: np.ndarray | torch.Tensor | list[int],
    *,
    topk: int = 0,
    distance_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    single_shot_repeats: int = 0,
    seed: int = 0,
) -> QueryResults:
    """Per-query AP, INP, first-match rank (and optionally top-k lists, CUHK03 single-shot ranks) from scores.

    Args:
        score_chunks: ``(start, scores [C, G])`` for consecutive query rows covering every query once, in order;
            larger = closer. The tensors are modified in place (pass copies if you need them afterwards).
        q_pids: query person ids.
        g_pids: gallery person ids (distractors, e.g. Market pid 0, are ordinary negatives).
        q_camids: query camera ids.
        g_camids: gallery camera ids.
        topk: also keep the ``topk`` nearest kept gallery entries per query (for ranked-result pictures).
        distance_of: turns scores into the distances reported with the top-k list (default: ``-score``).
        single_shot_repeats: > 0 adds the CUHK03 single-gallery-shot ranks with this many random draws.
        seed: seed of those draws.

    Returns:
        The per-query results; :meth:`QueryResults.summary` gives the averaged metrics.
    """
    q_pids_np, g_pids_np = _as_ids(q_pids), _as_ids(g_pids)
    q_cams_np, g_cams_np = _as_ids(q_camids), _as_ids(g_camids)
    num_q, num_g = len(q_pids_np), len(g_pids_np)
    if not (len(q_cams_np) == num_q and len(g_cams_np) == num_g):
        raise ValueError(
            f"label lengths differ: q_pids {num_q}, q_camids {len(q_cams_np)}, "
            f"g_pids {num_g}, g_camids {len(g_cams_np)}"
        )
    if topk < 0 or single_shot_repeats < 0:
        raise ValueError(f"topk={topk} and single_shot_repeats={single_shot_repeats} must be >= 0")
    distance_of = distance_of or torch.neg
    k_eff = min(topk, num_g)
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    first_hit = np.zeros(num_q, dtype=np.int64)
    num_matches = np.zeros(num_q, dtype=np.int64)
    top_i = np.full((num_q, topk), -1, dtype=np.int64)
    top_d = np.full((num_q, topk), np.nan, dtype=np.float32)
    single = np.zeros((num_q, single_shot_repeats), dtype=np.int64) if single_shot_repeats else None
    shot: _SingleShot | None = None

    indptr, gidx_all, qidx_all = _pairs_by_pid(q_pids_np, g_pids_np)
    is_pos_all = g_cams_np[gidx_all] != q_cams_np[qidx_all]  # same pid, other camera = true match
    expected = 0
    for start, sim in score_chunks:
        stop = start + sim.shape[0]
        if start != expected or stop > num_q or sim.shape[1] != num_g:
            raise ValueError(
                f"score chunk rows {start}:{stop} x {sim.shape[1]} do not continue rows 0:{expected} "
                f"of a {num_q} x {num_g} problem"
            )
        expected = stop
        device = sim.device
        p0, p1 = indptr[start], indptr[stop]
        rows = torch.as_tensor(qidx_all[p0:p1] - start, device=device)
        cols = torch.as_tensor(gidx_all[p0:p1], device=device)
        pos_np = is_pos_all[p0:p1]
        pos_mask = torch.as_tensor(pos_np, device=device)
        pos_vals = sim[rows, cols]
        if k_eff:
            # junk (same pid, same camera) leaves the list first, as in the metric; matches stay for the picture
            junk = ~pos_mask
            sim[rows[junk], cols[junk]] = float("-inf")
            vals, idx = sim.topk(k_eff, dim=1)
            kept = torch.isfinite(vals)
            top_i[start:stop, :k_eff] = torch.where(kept, idx, torch.full_like(idx, -1)).cpu().numpy()
            dist = distance_of(vals).float()
            top_d[start:stop, :k_eff] = torch.where(kept, dist, torch.full_like(dist, float("nan"))).cpu().numpy()
        # every same-pid entry (matches and same-camera junk) leaves the negatives: -inf is never >= a match
        sim[rows, cols] = float("-inf")
        counts = np.bincount(qidx_all[p0:p1][pos_np] - start, minlength=stop - start)
        num_matches[start:stop] = counts
        pmax = int(counts.max()) if counts.size else 0
        if pmax == 0:
            continue
        pos_rows = rows[pos_mask]
        pos_v = pos_vals[pos_mask]
        # pad matches into [C, Pmax], ascending, pads = +inf at the end
        offs = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(counts, out=offs[1:])
        slot = torch.as_tensor(np.arange(int(offs[-1])) - np.repeat(offs[:-1], counts), device=device)
        pad = torch.full((stop - start, pmax), float("inf"), device=device, dtype=sim.dtype)
        pad[pos_rows, slot] = pos_v
        pad = pad.sort(dim=1).values
        m = torch.as_tensor(counts, device=device)
        if device.type == "cpu":
            neg_ge = torch.from_numpy(_negatives_ahead_rowwise(sim.numpy(), pad.numpy(), counts))
        else:
            neg_ge = _negatives_ahead_broadcast(sim, pad)
        # reorder to descending similarity: k-th best match (k = 0..m-1) is ascending index m-1-k
        k = torch.arange(pmax, device=device).unsqueeze(0)
        asc = (m.unsqueeze(1) - 1 - k).clamp_min(0)
        n_ahead = neg_ge.gather(1, asc)  # negatives ranked before the k-th best match
        valid_k = k < m.unsqueeze(1)
        ranks = (k + 1 + n_ahead).double()  # 1-based rank of the k-th best match
        prec = torch.where(valid_k, (k + 1).double() / ranks, torch.zeros((), dtype=torch.float64, device=device))
        has = m > 0
        has_np = counts > 0
        mm = m[has].double()
        sel = np.flatnonzero(has_np) + start
        ap[sel] = (prec[has].sum(1) / mm).cpu().numpy()
        last = ranks[has].gather(1, (m[has] - 1).unsqueeze(1)).squeeze(1)
        inp[sel] = (mm / last).cpu().numpy()
        first_hit[sel] = ranks[has, 0].long().cpu().numpy()
        if single is not None:
            if shot is None:
                shot = _SingleShot(g_pids_np, single_shot_repeats, seed, device)
            single[start:stop] = shot.ranks(sim, pad, m).cpu().numpy()
    if expected != num_q:
        raise ValueError(f"score chunks covered rows 0:{expected} of {num_q} queries")
    num_skipped = int((first_hit == 0).sum())
    if num_skipped:
        log.info("%d of %d queries have no true match in the gallery and are skipped", num_skipped, num_q)
    return QueryResults(ap, inp, first_hit, num_matches, top_i, top_d, single)


def compute_metrics(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    q_pids: np.ndarray | torch.Tensor | list[int],
    g_pids: np.ndarray | torch.Tensor | list[int],
    q_camids: np.ndarray | torch.Tensor | list[int],
    g_camids: np.ndarray | torch.Tensor | list[int],
    max_rank: int = 50,
    query_chunk: int = 1024,
    *,
    metric: str = "cosine",
) -> ReIDMetrics:
    """CMC, mAP and mINP; by default cosine distance on L2-normalised features.

    Args:
        qf: query features ``[Q, D]`` (any device, computed on ``qf``'s device).
        gf: gallery features ``[G, D]``.
        q_pids: query person ids.
        g_pids: gallery person ids (distractors, e.g. Market pid 0, are ordinary negatives).
        q_camids: query camera ids.
        g_camids: gallery camera ids.
        max_rank: length of the CMC curve (gallery smaller than this: the curve is padded with its last value).
        query_chunk: queries ranked at a time; memory is about ``query_chunk x G x 4`` bytes.
        metric: ``cosine`` (L2-normalised features) or ``euclidean`` (squared distance on the raw features, as
            torchreid's default ``dist_metric``).

    Returns:
        The metrics; all zero with ``num_valid=0`` when no query has a valid match.
    """
    qf_t = _as_tensor(qf).float()
    gf_t = _as_tensor(gf).float().to(qf_t.device)
    num_q, num_g = qf_t.shape[0], gf_t.shape[0]
    n_qp, n_qc, n_gp, n_gc = (len(_as_ids(x)) for x in (q_pids, q_camids, g_pids, g_camids))
    if not (n_qp == n_qc == num_q and n_gp == n_gc == num_g):
        raise ValueError(
            f"feature / label lengths differ: qf {num_q}, q_pids {n_qp}, q_camids {n_qc}, "
            f"gf {num_g}, g_pids {n_gp}, g_camids {n_gc}"
        )
    if max_rank < 1 or query_chunk < 1:
        raise ValueError(f"max_rank={max_rank} and query_chunk={query_chunk} must be >= 1")
    chunks = score_chunks(qf_t, gf_t, metric, query_chunk)
    return rank_queries(chunks, q_pids, g_pids, q_camids, g_camids).summary(max_rank)
