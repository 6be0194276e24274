"""The pipeline-level MLflow run, the tags every run carries (git commit, data version, profile), and how stage
processes started by DVC find the parent run of the ``oskt run`` that started them.

``dvc repro`` runs each stage as its own process from a fixed ``cmd:``, so no argument can carry the parent run id
there. ``oskt run`` writes it to ``<out_dir>/.oskt-run.json`` together with its process id; a stage process attaches
to that parent only when that process is one of its ancestors (a file left by a killed run, or read by an unrelated
``dvc repro``, is ignored).
"""

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
from oskt.pipeline.tracking import target_from_config

RUN_FILE = ".oskt-run.json"


def data_version(paths: Paths, lock: str = "dvc.lock") -> str:
    """DVC's hash of the prepare stage's data output (from ``dvc.lock``: its output that is not under the output
    root); without DVC, a hash of the prepare manifest; '' when neither exists."""
    if os.path.exists(lock):
        with open(lock) as f:
            stages = (yaml.safe_load(f) or {}).get("stages", {})
        own = paths.root.rstrip("/") + "/"
        for out in stages.get("prepare", {}).get("outs", []):
            if out.get("md5") and not str(out.get("path", "")).startswith(own):
                return str(out["md5"])
    manifest = paths.prepare_manifest()
    if io.exists(manifest):
        return "manifest-" + hashlib.sha256(io.read_bytes(manifest)).hexdigest()[:16]
    return ""


def common_tags(cfg: Config) -> dict[str, str]:
    """Tags on every run of this pipeline invocation."""
    from oskt.checkpoint import git_sha  # imports torch: only when tags are made

    return {
        "git_commit": git_sha(),
        "data_version": data_version(Paths(cfg.compute.out_dir)),
        "profile": cfg.profile,
        "oskt_version": __version__,
    }


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    for _ in range(64):
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        pids.add(pid)
    return pids


def parent_run_id(out_dir: str) -> str:
    """The parent run an ``oskt run`` that is an ancestor of this process recorded in ``out_dir`` ('' if none)."""
    rec = {} if io.is_url(out_dir) else io.read_json_object(os.path.join(out_dir, RUN_FILE)) or {}
    return str(rec.get("parent_run_id", "")) if int(rec.get("pid", -1)) in _ancestors() else ""


def stage_target(cfg: Config) -> TrackingTarget:
    """The tracking target of a stage process: common tags, parent from a running ``oskt run`` (see above)."""
    local = cfg.compute.out_dir if not io.is_url(cfg.compute.out_dir) else ""
    return target_from_config(cfg, common_tags(cfg), parent_run_id(local) if local else "")


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str = "pipeline", *, announce: bool = False) -> Iterator[TrackingTarget]:
    """Open the parent MLflow run of one pipeline invocation and yield the target children attach to.

    With ``announce``, the run id is written to ``<out_dir>/.oskt-run.json`` for the stage processes this process
    starts (removed at the end). A disabled tracking config yields a disabled target.
    """
    target = target_from_config(cfg, common_tags(cfg), "")
    if not target.enabled:
        yield target
        return
    from oskt.pipeline.tracking import start_run

    run_file = os.path.join(cfg.compute.out_dir, RUN_FILE)
    with start_run(target, name, {"oskt.kind": "pipeline"}) as tracker:
        tracker.log_params(cfg.flat())
        if announce and not io.is_url(cfg.compute.out_dir):
            io.write_json_atomic(run_file, {"parent_run_id": tracker.run_id, "pid": os.getpid()})
        try:
            yield target.child(tracker.run_id)
        finally:
            if announce and os.path.exists(run_file):
                os.remove(run_file)
        if not target.tags.get("data_version"):  # known once the prepare stage has run
            tracker.set_tags({"data_version": data_version(Paths(cfg.compute.out_dir))})


def with_data_version(target: TrackingTarget | None, paths: Paths) -> TrackingTarget | None:
    """``target`` with its ``data_version`` tag filled in once the data exists (runs started before the prepare
    stage cannot know it)."""
    if target is None or target.tags.get("data_version"):
        return target
    version = data_version(paths)
    return dataclasses.replace(target, tags={**target.tags, "data_version": version}) if version else target
