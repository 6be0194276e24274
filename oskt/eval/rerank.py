"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), vectorised and chunked in torch (CPU and CUDA).

The method, on all ``N = Q + G`` images together (queries are part of the neighbourhood graph):

1. Original distance ``d(i, j)``: the squared Euclidean distance, on L2-normalised features for ``cosine``
   (``2 - 2 cos``, fast-reid's choice) or on the raw features for ``euclidean``; each row divided by its maximum
   (the authors' release does this; it makes ``exp(-d)`` below scale-free). ``d(i, i) = 0``.
2. ``N(i, k)``: the ``k + 1`` nearest images of ``i`` (itself first). k-reciprocal set
   ``R(i, k) = {j in N(i, k) : i in N(j, k)}`` (paper eq. 4).
3. Expansion (eq. 6-7): ``R*(i) = R(i, k1)``, plus ``R(c, k1/2)`` for every ``c in R(i, k1)`` whose half-size set
   shares *more than* 2/3 of its members with ``R(i, k1)``. (The paper writes ">=", the authors' release and the
   torchreid / fast-reid ports use ">"; we follow the release so that numbers match those tools.) ``k1/2`` is
   rounded half to even, as NumPy's ``around`` in the release.
4. ``V[i, j] = exp(-d(i, j))`` for ``j in R*(i)``, else 0 (eq. 10), each row scaled to sum 1 (release).
5. Local query expansion (eq. 11): ``V[i] <- mean of V[n]`` over the ``k2`` nearest ``n`` of ``i`` (itself
   included).
6. Jaccard distance (eq. 9 with the min / max form of eq. 10-12):
   ``d_J(q, g) = 1 - sum_j min(V[q, j], V[g, j]) / sum_j max(V[q, j], V[g, j])``, computed with
   ``sum max = sum V[q] + sum V[g] - sum min`` over the sparse rows (only columns where both are non-zero add to
   the minimum).
7. Final distance (eq. 13): ``d*(q, g) = (1 - lambda) d_J(q, g) + lambda d(q, g)``.

How it is computed here, and what it needs in memory (float32, ``K = max(k1 + 1, k2)``, ``D`` feature size):

- Pass 1 walks the ``N x N`` distance matrix in row blocks of ``chunk`` rows (one GEMM each), keeping only each
  row's ``K`` nearest indices and its maximum: ``chunk x N x 4`` bytes at a time plus ``N x K x 8``. The full
  ``N^2`` matrix (Market-1501: 19,281^2 x 4 B = 1.5 GB; MSMT17: 93,820^2 x 4 B = 35 GB) is never held.
- The sets ``R*`` are built with index arithmetic on those neighbour lists (``N x (k1+1) x (k1/2+1)`` booleans per
  block); the distances ``d(i, j)`` they need are recomputed from the features for those pairs only.
- ``V`` and its expansion are sparse (COO/CSR, 20 bytes per non-zero; a few hundred non-zeros per row).
- The Jaccard step walks query rows in blocks; the pairs ``(q, j, g)`` with ``V[q, j] V[g, j] != 0`` of a block
  are enumerated through a column index of the gallery rows, at most ``pair_budget`` pairs at a time (about 40
  bytes each), plus three ``block x G x 4`` bytes matrices.

So memory grows like ``N x (D x 4 + nnz_per_row x 20 x ~3)`` bytes plus the fixed blocks, and :func:`iter_rerank`
never holds the ``Q x G`` result either (only :func:`rerank_distance` assembles it: ``Q x G x 4`` bytes, Market 214 MB,
MSMT17 3.8 GB). ``bench/eval_speed.py`` measures the peak at Market size (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from oskt.eval.distance import prepare_features

__all__ = ["iter_rerank", "rerank_distance"]

_CACHED = 128
"""Nearest distances kept per row in pass 1 (``N x 128 x 12`` bytes: Market 30 MB, MSMT17 144 MB); members of
``R*`` farther than that are recomputed from the features."""


def _sq_dist_block(x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    """``|x_i - y_j|^2`` by the GEMM expansion, clamped at 0."""
    return (x @ y.t()).mul_(-2).add_(x_sq[:, None]).add_(y_sq[None, :]).clamp_min_(0)


def _sq_dist_pairs(x: torch.Tensor, x_sq: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``|x_i - x_j|^2`` for index pairs, in steps of two ``[step, D]`` gathers (~32 MB each in float32)."""
    step = max(1, (1 << 23) // max(1, x.shape[1]))
    out = torch.empty(i.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, i.shape[0], step):
        a, b = i[s : s + step], j[s : s + step]
        out[s : s + step] = (x_sq[a] + x_sq[b] - 2 * (x[a] * x[b]).sum(1)).clamp_min(0)
    out[i == j] = 0
    return out


def _pair_distances(
    x: torch.Tensor, x_sq: torch.Tensor, knn_w: torch.Tensor, d_w: torch.Tensor, i: torch.Tensor, j: torch.Tensor
) -> torch.Tensor:
    """``d(i, j)`` for the pairs of ``R*``: read from each row's cached nearest distances (pass 1) where ``j`` is
    among them, recomputed from the features otherwise (gathering 2 x D floats per pair is the slow part)."""
    n = knn_w.shape[0]
    keys, perm = (torch.arange(n, device=x.device)[:, None] * n + knn_w).flatten().sort()
    want = i * n + j
    pos = torch.searchsorted(keys, want).clamp_max(keys.numel() - 1)
    hit = keys[pos] == want
    out = torch.empty(i.shape[0], dtype=x.dtype, device=x.device)
    out[hit] = d_w.flatten()[perm[pos[hit]]]
    miss = ~hit
    if miss.any():
        out[miss] = _sq_dist_pairs(x, x_sq, i[miss], j[miss])
    return out


def _nearest(
    x: torch.Tensor, x_sq: torch.Tensor, wide: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's ``wide`` smallest squared distances (ascending) with their indices, and the row maxima; one
    ``[chunk, N]`` block of the distance matrix at a time. ``d(i, i)`` is set to 0, so every image is its own
    nearest neighbour.

    (Computing only the blocks above the diagonal would halve the GEMM, but merging the running top lists block by
    block made the whole pass 3x slower on CPU than one ``topk`` per full row block.)
    """
    n, dev, dtype = x.shape[0], x.device, x.dtype
    d_w = torch.empty(n, wide, dtype=dtype, device=dev)
    knn_w = torch.empty(n, wide, dtype=torch.long, device=dev)
    row_max = torch.empty(n, dtype=dtype, device=dev)
    for s in range(0, n, chunk):
        d = _sq_dist_block(x[s : s + chunk], x, x_sq[s : s + chunk], x_sq)
        rows = torch.arange(d.shape[0], device=dev)
        d[rows, rows + s] = 0.0
        row_max[s : s + chunk] = d.max(1).values.clamp_min(torch.finfo(dtype).tiny)
        d_w[s : s + chunk], knn_w[s : s + chunk] = d.topk(wide, dim=1, largest=False, sorted=True)
        del d
    return d_w, knn_w, row_max


def _reciprocal(fwd: torch.Tensor, chunk: int) -> torch.Tensor:
    """``recip[i, a]``: ``i`` is among the neighbours of its neighbour ``fwd[i, a]`` (k-reciprocal, eq. 4)."""
    n = fwd.shape[0]
    out = torch.empty(fwd.shape, dtype=torch.bool, device=fwd.device)
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(s + chunk, n), device=fwd.device)
        out[s : s + chunk] = (fwd[fwd[s : s + chunk]] == rows[:, None, None]).any(2)
    return out


def _expanded_sets(knn: torch.Tensor, k1: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``R*(i, k1)`` for every ``i`` as flat ``(row, col)`` index pairs, rows ascending (eq. 6-7)."""
    n = knn.shape[0]
    kh = int(round(k1 / 2))  # round half to even, as numpy.around in the authors' release
    fwd, fwd_h = knn[:, : k1 + 1], knn[:, : kh + 1]
    rec, rec_h = _reciprocal(fwd, chunk), _reciprocal(fwd_h, chunk)
    size_h = rec_h.sum(1)  # |R(c, k1/2)|
    sentinel = n
    rows_out, cols_out = [], []
    for s in range(0, n, chunk):
        f, r = fwd[s : s + chunk], rec[s : s + chunk]  # [C, k1+1]
        r_set = torch.where(r, f, torch.full_like(f, -1))  # R(i, k1), -1 = not a member
        cand_h, cand_rh = fwd_h[f], rec_h[f]  # [C, k1+1, kh+1]: R(c, k1/2) of every neighbour c
        member = (cand_h.unsqueeze(3) == r_set[:, None, None, :]).any(3) & cand_rh
        inter = member.sum(2)  # |R(i, k1) ∩ R(c, k1/2)|
        accept = r & (3 * inter > 2 * size_h[f])  # strictly more than 2/3 (release; see the module docstring)
        extra = torch.where(accept.unsqueeze(2) & cand_rh, cand_h, torch.full_like(cand_h, sentinel))
        base = torch.where(r, f, torch.full_like(f, sentinel))
        cand = torch.cat([base, extra.flatten(1)], 1).sort(1).values
        keep = cand < sentinel
        keep[:, 1:] &= cand[:, 1:] != cand[:, :-1]  # unique members
        rr, cc = keep.nonzero(as_tuple=True)
        rows_out.append(rr + s)
        cols_out.append(cand[rr, cc])
    return torch.cat(rows_out), torch.cat(cols_out)


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Sort the entries of an ``n x n`` COO matrix by (row, col), summing duplicates; returns (row pointer, rows,
    cols, values)."""
    t = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()
    r, c = t.indices()
    ptr = torch.zeros(n + 1, dtype=torch.long, device=vals.device)
    ptr[1:] = torch.bincount(r, minlength=n).cumsum(0)
    return ptr, r, c, t.values()


def iter_rerank(
    qf: torch.Tensor,
    gf: torch.Tensor,
    *,
    metric: str = "cosine",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk: int = 1024,
    pair_budget: int = 1 << 23,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Re-ranked distances ``(start, d* [C, G])`` for consecutive query blocks (see the module docstring).

    Args:
        qf: query features ``[Q, D]``; everything runs on its device, in its float dtype (float32 unless float64
            is passed).
        gf: gallery features ``[G, D]``.
        metric: ``cosine`` or ``euclidean`` (which features the original distance is computed on).
        k1: size of the k-reciprocal neighbourhood (paper and fast-reid: 20).
        k2: neighbours of the local query expansion (paper and fast-reid: 6; 1 = none).
        lambda_value: weight of the original distance in the final one (paper and fast-reid: 0.3).
        chunk: rows per block in pass 1 and at most this many queries per yielded block.
        pair_budget: at most this many (query, column, gallery) pairs at a time in the Jaccard step (~40 B each);
            a single query row with more pairs is still done in one go.
    """
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0 or chunk < 1 or pair_budget < 1:
        raise ValueError(
            f"re-ranking needs k1 >= 1, k2 >= 1, 0 <= lambda <= 1, chunk >= 1, pair_budget >= 1; got k1={k1}, "
            f"k2={k2}, lambda={lambda_value}, chunk={chunk}, pair_budget={pair_budget}"
        )
    dtype = qf.dtype if qf.dtype in (torch.float32, torch.float64) else torch.float32
    gf = gf.to(qf.device)
    x = torch.cat([prepare_features(qf, metric), prepare_features(gf, metric)]).to(dtype).contiguous()
    num_q, n = qf.shape[0], x.shape[0]
    dev = x.device
    x_sq = (x * x).sum(1)
    k = min(max(k1 + 1, k2), n)  # slices below of k1 + 1 or k2 columns simply stop at N

    # pass 1: each row's `wide` nearest (indices and distances) and its maximum
    wide = min(n, max(k, _CACHED))
    d_w, knn_w, row_max = _nearest(x, x_sq, wide, chunk)
    knn = knn_w[:, :k]

    # R*(i) and V (eq. 6-10): sparse, rows scaled to sum 1
    vr, vc = _expanded_sets(knn, k1, chunk)
    w = torch.exp(-_pair_distances(x, x_sq, knn_w, d_w, vr, vc) / row_max[vr])
    del knn_w, d_w
    w = w / torch.zeros(n, dtype=dtype, device=dev).index_add_(0, vr, w)[vr]

    # local query expansion (eq. 11): V_qe[i] = mean over the k2 nearest n of V[n]
    if k2 > 1:
        v_ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
        v_ptr[1:] = torch.bincount(vr, minlength=n).cumsum(0)
        nb = knn[:, :k2]  # [N, min(k2, N)]
        cnt = (v_ptr[nb + 1] - v_ptr[nb]).flatten()  # entries contributed by each (i, n)
        src_row = torch.arange(n, device=dev).repeat_interleave(nb.shape[1]).repeat_interleave(cnt)
        starts = v_ptr[nb.flatten()].repeat_interleave(cnt)
        offs = torch.arange(int(cnt.sum()), device=dev) - (cnt.cumsum(0) - cnt).repeat_interleave(cnt)
        src = starts + offs
        ptr, er, ec, ev = _csr(src_row, vc[src], w[src] / nb.shape[1], n)
    else:
        ptr, er, ec, ev = _csr(vr, vc, w, n)
    row_sum = torch.zeros(n, dtype=dtype, device=dev).index_add_(0, er, ev)

    # column index over the gallery rows: for column j, the gallery rows g with V[g, j] != 0
    g_sel = er >= num_q
    g_row, g_col, g_val = er[g_sel] - num_q, ec[g_sel], ev[g_sel]
    order = torch.argsort(g_col, stable=True)
    g_row, g_col, g_val = g_row[order], g_col[order], g_val[order]
    col_cnt = torch.bincount(g_col, minlength=n)
    col_ptr = torch.zeros(n + 1, dtype=torch.long, device=dev)
    col_ptr[1:] = col_cnt.cumsum(0)
    num_g = n - num_q
    g_sum = row_sum[num_q:]

    # pairs each query row will enumerate, to cut query blocks at ~pair_budget pairs
    q_pairs = torch.zeros(num_q, dtype=torch.long, device=dev)
    q_ent = slice(0, int(ptr[num_q]))
    q_pairs.index_add_(0, er[q_ent], col_cnt[ec[q_ent]])
    cum = np.concatenate([[0], q_pairs.cumsum(0).cpu().numpy()])
    s = 0
    while s < num_q:
        e = int(np.searchsorted(cum, cum[s] + pair_budget, side="right")) - 1
        e = min(max(e, s + 1), s + chunk, num_q)
        p0, p1 = int(ptr[s]), int(ptr[e])
        qi, qj, qv = er[p0:p1] - s, ec[p0:p1], ev[p0:p1]
        cnt = col_cnt[qj]
        ent = torch.arange(qi.shape[0], device=dev).repeat_interleave(cnt)
        within = torch.arange(int(cnt.sum()), device=dev) - (cnt.cumsum(0) - cnt)[ent]
        at = col_ptr[qj][ent] + within
        t_min = torch.zeros((e - s) * num_g, dtype=dtype, device=dev)
        t_min.index_add_(0, qi[ent] * num_g + g_row[at], torch.minimum(qv[ent], g_val[at]))
        t_min = t_min.view(e - s, num_g)
        union = (row_sum[s:e, None] + g_sum[None, :] - t_min).clamp_min_(torch.finfo(dtype).tiny)
        jac = 1.0 - t_min / union
        orig = _sq_dist_block(x[s:e], x[num_q:], x_sq[s:e], x_sq[num_q:]).div_(row_max[s:e, None])
        yield s, jac.mul_(1.0 - lambda_value).add_(orig, alpha=lambda_value)
        s = e


def rerank_distance(qf: torch.Tensor, gf: torch.Tensor, **options: object) -> torch.Tensor:
    """The whole re-ranked ``[Q, G]`` distance matrix (``Q x G x 4`` bytes); ``options`` as :func:`iter_rerank`."""
    return torch.cat([d for _, d in iter_rerank(qf, gf, **options)])  # type: ignore[arg-type]
