"""Ranked-result pictures (torchreid's ``visrank``): each query beside its top-k gallery images.

One row per query: the query (grey border, its pid / camera and AP underneath) then its ``k`` nearest gallery
images under the evaluation rule (same-pid-same-camera images are left out, as in the metric), each with a
green border when it is a true match (same pid, other camera) and red otherwise, its rank and distance
underneath. :func:`query_picture` draws one query, :func:`grid_picture` several (one row each),
:func:`worst_queries_grid` the ``n`` queries with the lowest AP (what a report shows to explain failures).
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from oskt import io
from oskt.data.layouts import read_image
from oskt.eval.features import EvalResult

__all__ = [
    "grid_picture",
    "query_picture",
    "save_png",
    "worst_queries",
    "worst_queries_grid",
    "write_visrank",
]

MATCH = (0, 170, 0)
"""Border of a true match (green)."""
WRONG = (220, 0, 0)
"""Border of a false match (red)."""
QUERY = (128, 128, 128)
"""Border of the query (grey)."""
CELL = (128, 64)
"""Image size in a picture (height, width): the standard 256 x 128 ReID crop, halved."""
_BORDER, _GAP, _TEXT = 4, 12, 26


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _cell(path: str, colour: tuple[int, int, int], lines: Sequence[str], font: ImageFont.ImageFont) -> Image.Image:
    h, w = CELL
    out = Image.new("RGB", (w + 2 * _BORDER, h + 2 * _BORDER + _TEXT), "white")
    out.paste(Image.new("RGB", (w + 2 * _BORDER, h + 2 * _BORDER), colour), (0, 0))
    out.paste(read_image(path).resize((w, h), Image.BILINEAR), (_BORDER, _BORDER))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((1, h + 2 * _BORDER + 1 + 12 * i), line, fill=(0, 0, 0), font=font)
    return out


def _row(result: EvalResult, qi: int, k: int, font: ImageFont.ImageFont) -> Image.Image:
    q = result.query[qi]
    ap = result.queries.ap[qi]
    cells = [_cell(q.path, QUERY, [f"query {q.pid} c{q.camid}", "no match" if np.isnan(ap) else f"AP {ap:.2f}"], font)]
    idx, dist = result.queries.topk_index[qi], result.queries.topk_distance[qi]
    for rank in range(min(k, idx.shape[0])):
        gi = int(idx[rank])
        if gi < 0:  # fewer kept gallery images than k
            break
        g = result.gallery[gi]
        hit = g.pid == q.pid and g.camid != q.camid
        cells.append(
            _cell(g.path, MATCH if hit else WRONG, [f"#{rank + 1} {g.pid} c{g.camid}", f"d {dist[rank]:.3g}"], font)
        )
    cw, ch = cells[0].size
    row = Image.new("RGB", (cw * len(cells) + _GAP, ch), "white")
    for i, c in enumerate(cells):
        row.paste(c, (i * cw + (_GAP if i else 0), 0))
    return row


def _check_topk(result: EvalResult, k: int) -> None:
    have = result.queries.topk_index.shape[1]
    if k < 1 or have < min(k, len(result.gallery)):
        raise ValueError(
            f"pictures of the top {k} need an evaluation run with topk >= {k} (this one kept {have}); "
            "pass topk= to evaluate_dataset"
        )


def query_picture(result: EvalResult, qi: int, k: int = 10) -> Image.Image:
    """Query ``qi`` and its top ``k`` gallery images, one row."""
    _check_topk(result, k)
    return _row(result, qi, k, _font())


def grid_picture(result: EvalResult, queries: Sequence[int], k: int = 10, title: str = "") -> Image.Image:
    """One row per query in ``queries`` (and an optional title line above)."""
    _check_topk(result, k)
    font = _font()
    rows = [_row(result, int(qi), k, font) for qi in queries]
    if not rows:
        raise ValueError("grid_picture needs at least one query")
    top = 18 if title else 0
    width = max(r.size[0] for r in rows)
    out = Image.new("RGB", (width, top + sum(r.size[1] + 6 for r in rows)), "white")
    if title:
        ImageDraw.Draw(out).text((4, 3), title, fill=(0, 0, 0), font=font)
    y = top
    for r in rows:
        out.paste(r, (0, y))
        y += r.size[1] + 6
    return out


def worst_queries(result: EvalResult, n: int = 8) -> list[int]:
    """The ``n`` valid queries with the lowest AP (ties: the later first match first), worst first."""
    q = result.queries
    valid = np.flatnonzero(q.valid)
    order = np.lexsort((-q.first_hit[valid], q.ap[valid]))
    return [int(i) for i in valid[order][:n]]


def worst_queries_grid(result: EvalResult, n: int = 8, k: int = 10) -> Image.Image:
    """A grid of the ``n`` worst queries by AP with their top ``k`` (for the report)."""
    worst = worst_queries(result, n)
    if not worst:
        raise ValueError("no query has a true match: there is no worst query to show")
    return grid_picture(result, worst, k, title=f"{len(worst)} worst queries by AP (green: true match, red: false)")


def save_png(img: Image.Image, path: str) -> str:
    """Write ``img`` as PNG atomically (local or ``s3://``)."""
    buf = _io.BytesIO()
    img.save(buf, format="PNG")
    io.write_bytes_atomic(path, buf.getvalue())
    return path


def write_visrank(result: EvalResult, out_dir: str, k: int = 10, max_queries: int | None = None) -> list[str]:
    """One PNG per query (``<index>_<image name>.png``) under ``out_dir``; returns the paths written.

    Args:
        result: an evaluation with ``topk >= k``.
        out_dir: folder (created; local or ``s3://``).
        k: gallery images per query.
        max_queries: only the first this many queries (None = all: Market-1501 has 3,368).
    """
    _check_topk(result, k)
    font = _font()
    n = len(result.query) if max_queries is None else min(max_queries, len(result.query))
    paths = []
    for qi in range(n):
        stem = os.path.splitext(result.query[qi].path.rstrip("/").rsplit("/", 1)[-1])[0]
        paths.append(save_png(_row(result, qi, k, font), io.join(out_dir, f"{qi:05d}_{stem}.png")))
    return paths
