"""Clustering of teacher weight rows into chain rows (SPEC.md §2.1).

scikit-learn ``AgglomerativeClustering`` with its defaults (Ward linkage, Euclidean). ``metric="euclidean"`` uses the
raw rows (the CNN choice), ``"cosine"`` L2-normalises every row of every coupled weight first (the ViT choice:
Ward on unit rows ≈ cosine distance), ``"auto"`` picks per family. Cluster labels keep scikit-learn's numbering
(expansion's tie order depends on it, SPEC.md §3.1). The ``init="random"`` ablation replaces the labels by a seeded
random assignment with every cluster non-empty ("wo_GInit" in the authors' code).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from torch import Tensor

from oskt.errors import SpecError

METRICS = ("auto", "euclidean", "cosine")
INITS = ("center", "random")


def resolve_metric(metric: str, family: str) -> str:
    """``auto`` -> ``euclidean`` for CNN, ``cosine`` for ViT (SPEC.md §2.1)."""
    if metric not in METRICS:
        raise SpecError(f"metric={metric!r} is not allowed: expected one of {METRICS}")
    if metric == "auto":
        return "euclidean" if family == "resnet" else "cosine"
    return metric


def row_features(weights: list[tuple[Tensor, int]], metric: str) -> np.ndarray:
    """Per-channel clustering features: the horizontal concatenation of each coupled weight's rows.

    Args:
        weights: ``(weight, repeat)`` pairs; a weight has ``repeat × N`` rows (``repeat = 3`` for a fused qkv,
            whose q, k and v rows of channel ``i`` are concatenated, SPEC.md §2.3).
        metric: ``euclidean`` (raw rows) or ``cosine`` (every row L2-normalised before concatenation [inferred for
            the residual stream: the authors normalise per weight matrix, as for q/k/v]).

    Returns:
        ``[N, F]`` float64 features.
    """
    pieces = []
    for w, repeat in weights:
        rows = w.detach().to("cpu", torch.float64).reshape(repeat, w.shape[0] // repeat, -1)
        if metric == "cosine":
            rows = torch.nn.functional.normalize(rows, dim=-1)
        pieces.append(rows.permute(1, 0, 2).reshape(rows.shape[1], -1))
    return torch.cat(pieces, dim=1).numpy()


def ward_labels(features: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward agglomerative clustering into exactly ``n_clusters`` non-empty clusters, numbered as scikit-learn
    returns them (as the authors' code keeps them, SPEC.md §2.1).

    The numbering is data, not cosmetics: expansion gives extra copies to the smallest cluster index on a tie of
    ``copies / size`` (SPEC.md §3.1), so renumbering the clusters would give tied clusters their copies in another
    order than the authors' implementation, and the same teacher another student.
    """
    n = features.shape[0]
    if not 1 <= n_clusters <= n:
        raise SpecError(f"cannot cluster {n} rows into {n_clusters} clusters")
    if n_clusters == 1 or n == 1:
        return np.zeros(n, dtype=np.int64)  # what scikit-learn returns, without building the tree
    return AgglomerativeClustering(n_clusters=n_clusters).fit_predict(features).astype(np.int64)


def random_labels(n: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """A random assignment of ``n`` rows to ``n_clusters`` clusters, every cluster non-empty (seeded)."""
    labels = np.concatenate([np.arange(n_clusters), rng.integers(0, n_clusters, n - n_clusters)])
    return _relabel(rng.permutation(labels))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by their first member (the random-assignment ablation only: its numbering is arbitrary
    anyway, the authors' random assignment being unseeded)."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    uniq = np.unique(labels)
    return remap[np.searchsorted(uniq, labels)].astype(np.int64)


def cluster_partition(
    features: np.ndarray, n_clusters: int, heads: int = 1, init: str = "center", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Labels of one partition. ``heads > 1``: each head's channels are clustered separately into
    ``n_clusters / heads`` clusters and labels are offset by head, so heads never mix (SPEC.md §2.3)."""
    if init not in INITS:
        raise SpecError(f"init={init!r} is not allowed: expected one of {INITS}")
    n = features.shape[0]
    if n % heads or n_clusters % heads:
        raise SpecError(f"{n} channels / {n_clusters} clusters are not divisible by {heads} heads")
    nh, mh = n // heads, n_clusters // heads
    rng = rng or np.random.default_rng(0)
    out = []
    for h in range(heads):
        f = features[h * nh : (h + 1) * nh]
        lab = random_labels(nh, mh, rng) if init == "random" else ward_labels(f, mh)
        out.append(lab + h * mh)
    return np.concatenate(out).astype(np.int64)
