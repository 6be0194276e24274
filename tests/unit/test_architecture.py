"""The layering is checked, not hoped for: the import-linter contracts of pyproject.toml (oskt never imports flows;
only the pipeline's edge modules import MLflow / Prefect / Ray / DVC; subpackages in layers; no import cycles between
sibling modules), and no environment variable in the code carries what an argument can."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_import_linter_contracts_hold() -> None:
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    r = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "4 kept, 0 broken" in r.stdout


def test_the_old_argument_carrying_environment_variables_are_gone() -> None:
    pattern = re.compile(r"OSKT_(PIPELINE_BACKEND|GRID_ENGINE|RAY_NUM_CPUS|MLFLOW_PARENT_RUN_ID)")
    hits = []
    for top in ("oskt", "flows", "tests", "bench", "infra"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".py", ".sh", ".yaml", ".md")) and f != os.path.basename(__file__):
                    with open(os.path.join(dirpath, f), errors="replace") as fh:
                        if pattern.search(fh.read()):
                            hits.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
    assert hits == []
