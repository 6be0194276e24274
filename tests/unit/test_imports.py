"""The library must not need the orchestration stack, and must not do anything when imported."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import oskt

BLOCKED = ("prefect", "prefect_ray", "ray", "mlflow", "dvc", "s3fs")

SCRIPT = r"""
import importlib, importlib.abc, logging, os, pkgutil, sys
BLOCKED = %r
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
before = set(os.listdir("."))
root_handlers = list(logging.getLogger().handlers)
import oskt
names = [m.name for m in pkgutil.walk_packages(oskt.__path__, "oskt.") if not m.name.endswith("__main__")]
for n in names:
    importlib.import_module(n)
assert set(os.listdir(".")) == before, "an import created files"
assert logging.getLogger().handlers == root_handlers, "an import configured logging"
assert "MLFLOW_TRACKING_URI" not in os.environ
print(len(names))
"""


def test_every_module_imports_without_the_orchestration_stack(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(oskt.__file__)))
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT % (BLOCKED,)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.strip().splitlines()[-1])
    assert n == len([m for m in pkgutil.walk_packages(oskt.__path__, "oskt.") if not m.name.endswith("__main__")])
    assert os.listdir(tmp_path) == []
