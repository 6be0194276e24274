"""The pipeline-level MLflow run and the tags every run carries (git commit, data version, profile)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Iterator

import yaml

from oskt import __version__, io
from oskt.config import Config
from oskt.pipeline.records import Paths, TrackingTarget
from oskt.pipeline.tracking import PARENT_ENV, target_from_config


def data_version(cfg: Config, lock: str = "dvc.lock") -> str:
    """DVC's hash of the prepare stage's data output (from ``dvc.lock``); without DVC, a hash of the prepare
    manifest; '' when neither exists."""
    if os.path.exists(lock):
        with open(lock) as f:
            stages = (yaml.safe_load(f) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            if out.get("path") == cfg.data.root and out.get("md5"):
                return str(out["md5"])
    manifest = Paths(cfg.compute.out_dir).prepare_manifest()
    if io.exists(manifest):
        return "manifest-" + hashlib.sha256(io.read_bytes(manifest)).hexdigest()[:16]
    return ""


def common_tags(cfg: Config) -> dict[str, str]:
    """Tags on every run of this pipeline invocation."""
    from oskt.checkpoint import git_sha  # imports torch: only when tags are made

    return {
        "git_commit": git_sha(),
        "data_version": data_version(cfg),
        "profile": cfg.profile,
        "oskt_version": __version__,
    }


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str = "pipeline") -> Iterator[TrackingTarget]:
    """Open the parent MLflow run of one pipeline invocation and yield the target children attach to.

    Nested under ``$OSKT_MLFLOW_PARENT_RUN_ID`` when that is set (e.g. the flow started by ``oskt run``); a disabled
    tracking config yields a disabled target.
    """
    target = target_from_config(cfg, common_tags(cfg))
    if not target.enabled:
        yield target
        return
    from oskt.pipeline.tracking import start_run

    with start_run(target, name, {"oskt.kind": "pipeline"}) as tracker:
        tracker.log_params(cfg.flat())
        yield target.child(tracker.run_id)
        if not target.tags.get("data_version"):
            tracker.set_tags({"data_version": data_version(cfg)})  # known once the prepare stage has run


def with_data_version(cfg: Config, target: TrackingTarget | None) -> TrackingTarget | None:
    """``target`` with its ``data_version`` tag filled in once the data exists (runs started before the prepare
    stage cannot know it)."""
    if target is None or target.tags.get("data_version"):
        return target
    version = data_version(cfg)
    return dataclasses.replace(target, tags={**target.tags, "data_version": version}) if version else target


def parent_env(run_id: str) -> dict[str, str]:
    """Environment for a child process (DVC stages) that must attach to ``run_id``."""
    return {**os.environ, PARENT_ENV: run_id}
