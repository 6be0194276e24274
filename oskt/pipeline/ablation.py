"""Ablations: the OSKT rows of the student grid again under changed settings, each a result row in the report.

The paper's ablations are config switches (``chain.init=random`` vs ``center``, ``chain.metric=cosine`` vs
``euclidean``, one chain ``chain.widths=[8]`` vs several). An ablation named NAME runs the whole pipeline (Prefect
flow, grid on Ray, MLflow) with its overrides, the OSKT method only, into ``<out>/ablations/NAME``, with the main
run's output root as ``compute.reuse_from``: its teachers (and any chain whose key the overrides leave unchanged)
are adopted, not retrained (``oskt.pipeline.stages.finished``). ``ablation.json`` in that folder records the
overrides; ``oskt report`` on the main config finds every recorded ablation and adds a row ``OSKT (NAME)`` per
scenario table, from MLflow alone.

    oskt run --ablation random-init --set chain.init=random
    oskt report
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from oskt import io
from oskt.config import Config, with_overrides
from oskt.errors import ConfigError

ABLATIONS_DIR = "ablations"
ABLATION_FILE = "ablation.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
METHOD = "oskt"


def ablation_dir(out_dir: str, name: str) -> str:
    return io.join(out_dir, ABLATIONS_DIR, name)


def ablation_overrides(cfg: Config, name: str, overrides: Sequence[str]) -> list[str]:
    """The ``--set`` list that turns the main config into the ablation's: its overrides, OSKT only, writing into
    ``<out>/ablations/NAME``."""
    if not NAME_RE.match(name):
        raise ConfigError(f"ablation name {name!r} is not allowed: expected letters, digits, '.', '_' or '-'")
    if not overrides:
        raise ConfigError(f"ablation {name!r} has no --set KEY=VALUE: an ablation must change a setting")
    return [
        *overrides,
        f"students.methods=[{METHOD}]",
        f"compute.out_dir={ablation_dir(cfg.compute.out_dir, name)}",
        f"compute.reuse_from={json.dumps([cfg.compute.out_dir, *cfg.compute.reuse_from])}",
    ]


def ablation_config(cfg: Config, name: str, overrides: Sequence[str]) -> Config:
    """The ablation's resolved config (see :func:`ablation_overrides`)."""
    return with_overrides(cfg, ablation_overrides(cfg, name, overrides))


def prepare_ablation(cfg: Config, name: str, overrides: Sequence[str]) -> Config:
    """Resolve the ablation's config and record it in ``ablation.json`` (its teachers come from the main run through
    ``compute.reuse_from``). Returns the ablation's config (what the pipeline then runs)."""
    acfg = ablation_config(cfg, name, overrides)
    io.makedirs(acfg.compute.out_dir)
    io.write_json_atomic(io.join(acfg.compute.out_dir, ABLATION_FILE), {"name": name, "overrides": list(overrides)})
    return acfg


def find_ablations(cfg: Config) -> dict[str, Config]:
    """Every ablation recorded under ``<out>/ablations``: name → its config (derived from ``cfg``)."""
    root = io.join(cfg.compute.out_dir, ABLATIONS_DIR)
    if not io.exists(root):
        return {}
    found = {}
    for name in io.listdir(root):
        path = io.join(root, name, ABLATION_FILE)
        if io.exists(path):
            rec = io.read_json(path)
            found[name] = ablation_config(cfg, name, rec.get("overrides", []))
    return found
