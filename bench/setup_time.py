"""Set-up time of the project environment (`make setup`), from a fresh clone of this repository.

Measures, in one run:
* cold  — empty uv cache, no .venv: everything downloaded from the registry and installed (skipped with --quick);
* warm  — uv cache already filled, no .venv (a second clone on the same machine, or CI on a developer machine);
* no-op — .venv up to date (what every later `make run` / `make test` pays).

Usage: .venv/bin/python bench/setup_time.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed_setup(repo: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["make", "setup"], cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the cold (empty cache) measurement")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "oskt"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        if not args.quick:
            cold_env = dict(env, UV_CACHE_DIR=str(Path(tmp) / "uv-cache"))
            results["cold_s"] = _timed_setup(repo, cold_env)
            shutil.rmtree(repo / ".venv")
            results["warm_s"] = _timed_setup(repo, cold_env)
            results["noop_s"] = _timed_setup(repo, cold_env)
        else:
            results["warm_s"] = _timed_setup(repo, env)
            results["noop_s"] = _timed_setup(repo, env)
        results["venv_gb"] = sum(f.stat().st_size for f in (repo / ".venv").rglob("*") if f.is_file()) / 1e9
    out = ROOT / "bench" / "results" / "setup_time.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results.items():
        print(f"{k}: {v:.2f}")
    print(f"setup_time: warm_s={results['warm_s']:.1f} (goal <= 120)")


if __name__ == "__main__":
    main()
