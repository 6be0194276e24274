"""Stand-in data sets and the up-front image check: generation time and what a cached re-check costs.

Writes the three stand-ins (Market-1501, MSMT17_V1, CUHK03-NP) at their defaults into a temporary folder, then runs
:func:`oskt.data.verify_images` over every split of the Market stand-in twice with one cache file: the first run
decodes every image, the second only compares (size, mtime). Both timings come from the same run.

    python bench/data_standin.py            # default stand-ins (24 + 24 ids)
    python bench/data_standin.py --quick    # 12 + 12 ids (< 1 min)

Last line: ``data_standin: recheck_ratio=<value> (goal <= 0.1)`` (cached re-check time / first check time);
figures go to ``bench/results/data_standin.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from oskt.data import load_layout, make_standin, verify_images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 + 12 ids instead of 24 + 24")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    ids = 12 if args.quick else 24
    figures: dict[str, object] = {"ids": ids, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("market1501", "msmt17", "cuhk03"):
            t0 = time.perf_counter()
            c = make_standin(kind, os.path.join(tmp, kind), ids=ids)
            figures[f"{kind}_seconds"] = round(time.perf_counter() - t0, 3)
            figures[f"{kind}_files"] = c["files"]
            print(f"{kind}: {c['files']} files in {figures[f'{kind}_seconds']} s", flush=True)
        ds = load_layout(os.path.join(tmp, "market1501"))
        cache = os.path.join(tmp, "check.json")
        t0 = time.perf_counter()
        first = verify_images(ds, cache, threads=2)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = verify_images(ds, cache, threads=2)
        t_second = time.perf_counter() - t0
    assert first.decoded > 0 and second.decoded == 0 and second.cached == first.decoded
    figures.update(
        images_checked=first.decoded,
        first_check_seconds=round(t_first, 4),
        recheck_seconds=round(t_second, 4),
        recheck_ratio=round(t_second / t_first, 4),
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "data_standin.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures))
    print(f"data_standin: recheck_ratio={figures['recheck_ratio']} (goal <= 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
