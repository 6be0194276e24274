"""The orchestration verbs: ``oskt run`` (the whole pipeline: DVC → Prefect → Ray → MLflow), ``oskt stage <name>``
(one stage, what ``dvc.yaml`` runs as ``python -m flows stage <name>``) and ``oskt grid`` (only the student grid).

They live here, not in ``oskt.cli``, because they choose and own the grid engine (``flows.engines``); this package
plugs them into the ``oskt`` command through the ``oskt.cli`` entry point group (``pyproject.toml``), so the library
never imports ``flows``. ``python -m flows <verb>`` runs the same verbs without the ``oskt`` entry point.

Signals: ``oskt run`` starts ``dvc repro`` in its own process group; SIGTERM or SIGINT to ``oskt run`` is passed to
that whole group (DVC and the stage process it runs, which unwinds: the running epoch is abandoned, the last
finished epoch's ``last.pt`` stays, a local Ray and a temporary Prefect server are shut down). Whatever is still
alive after ``STOP_GRACE_S`` is killed. A rerun resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import time

from oskt import io
from oskt.cli.common import add_config_args, add_set_arg, config_from_args, run_guarded, setup_logging
from oskt.config import PROFILES, Config, dump_config, load_config, read_params, write_resolved
from oskt.errors import OsktError

log = logging.getLogger("oskt.pipeline")

STAGES = ("prepare", "teacher", "chain", "students", "report")
STOP_GRACE_S = 8.0


# ------------------------------------------------------------------------------------------------ oskt stage


def run_stage(args: argparse.Namespace) -> int:
    """Run one stage in this process (DVC's ``cmd:``)."""
    from flows.engines import cell_threads, engine_for, no_telemetry
    from oskt.data.refs import dataset_ref
    from oskt.pipeline import stages
    from oskt.pipeline.graph import datasets_used, jobs_from_config, run_options
    from oskt.pipeline.preflight import preflight
    from oskt.pipeline.records import Paths
    from oskt.pipeline.run import stage_target

    cfg = _config(args)
    no_telemetry()
    preflight(cfg)
    write_resolved(cfg, cfg.compute.out_dir)  # the whole resolved config next to the jobs it made
    paths, target, run = Paths.of(cfg.compute), stage_target(cfg), run_options(cfg)
    graph = jobs_from_config(cfg)
    name = args.stage
    if name == "prepare":
        refs = [dataset_ref(n, cfg.data) for n in datasets_used(cfg)]
        rec = stages.prepare_data(refs, paths, target, bad_images=cfg.data.bad_images, run=run)
        print(f"prepare: {len(rec.datasets)} data sets -> {rec.manifest}")
    elif name == "teacher":
        for source in [args.source] if args.source else cfg.data.sources:
            r = stages.train_teacher(graph.teachers[_source(cfg, source)], paths, target, run)
            print(f"teacher {source}: {r.checkpoint}{' (reused)' if r.reused else ''}")
    elif name == "chain":
        for (source, width), job in graph.chains.items():
            if (args.source and source != args.source) or (args.width and width != args.width):
                continue
            r = stages.refine_chain(job, paths, target, run)
            print(f"chain {source}/w{width}: {r.checkpoint}{' (reused)' if r.reused else ''}")
    elif name == "students":
        engine = engine_for(cfg.compute, args.ray_address)
        results = stages.train_students(
            graph.cells, paths, target, engine=engine, threads=cell_threads(cfg.compute), run=run
        )
        print(
            f"students: {len(results)} cells ({sum(r.skipped for r in results)} already finished) -> "
            f"{paths.students_dir()}"
        )
    elif name == "report":
        from oskt.pipeline.reporting import report as build_report

        rec = build_report(cfg, paths, target)
        print(f"report: {rec.markdown} ({rec.num_runs} cells)")
    return 0


def _source(cfg: Config, source: str) -> str:
    if source not in cfg.data.sources:
        raise OsktError(f"--source {source!r} is not in data.sources {list(cfg.data.sources)}")
    return source


def _config(args: argparse.Namespace) -> Config:
    if getattr(args, "engine", None):
        args.overrides = [*args.overrides, f"compute.engine={args.engine}"]
    if getattr(args, "num_cpus", None):
        args.overrides = [*args.overrides, f"compute.ray_num_cpus={args.num_cpus}"]
    return config_from_args(args)


def add_stage_args(p: argparse.ArgumentParser, with_stage: bool = True) -> None:
    if with_stage:
        p.add_argument("stage", choices=STAGES)
    add_config_args(p)
    p.add_argument("--source", default=None, help="teacher / chain: one source data set (default: all)")
    p.add_argument("--width", type=int, default=None, help="chain: one width (default: all)")
    add_engine_args(p)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", choices=("prefect", "ray", "serial"), default=None, help="grid engine (default compute.engine)"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster for the grid (default $RAY_ADDRESS, compute.ray_address, else a local Ray)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default compute.ray_num_cpus)")


# ------------------------------------------------------------------------------------------------ oskt run


def ensure_params(path: str, profile: str | None, force: bool = False) -> str:
    """Write a complete params file for ``profile`` (default quick) when missing; refuse a silent profile switch."""
    if io.exists(path) and not force:
        have = read_params(path).get("profile")
        if profile and have and have != profile:
            raise OsktError(
                f"{path} holds profile {have!r}, not {profile!r}: pass --force-params to rewrite it "
                f"(or drop --profile to run {have!r})"
            )
        return path
    cfg = load_config(profile=profile or "quick")
    io.write_text_atomic(path, dump_config(cfg))
    print(f"wrote {path} (profile {cfg.profile})")
    return path


def run_group(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in its own process group and wait; SIGTERM / SIGINT here go to the whole group, and whatever is
    left of it ``STOP_GRACE_S`` later is killed. Returns the exit code; raises SystemExit(128 + signal) when stopped."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    stopped: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopped.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = None
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stopped and deadline is None:
                    deadline = time.monotonic() + STOP_GRACE_S
                if deadline is not None and time.monotonic() > deadline:
                    _signal_group(proc.pid, signal.SIGKILL)
        if stopped:
            _reap_group(proc.pid, deadline or time.monotonic() + STOP_GRACE_S)
            raise SystemExit(128 + stopped[0])
        return rc
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _reap_group(pgid: int, deadline: float) -> None:
    """Wait until process group ``pgid`` is empty; kill what remains at ``deadline``."""
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def run_pipeline(args: argparse.Namespace) -> int:
    """Preflight, then the whole pipeline under one MLflow parent run; prints where the report is."""
    from flows.engines import no_telemetry
    from oskt.pipeline.preflight import preflight
    from oskt.pipeline.records import Paths
    from oskt.pipeline.run import pipeline_run

    no_telemetry()
    params = ensure_params(args.params or "params.yaml", args.profile, args.force_params)
    overrides = list(args.overrides)
    if args.ablation:
        from oskt.pipeline.ablation import ablation_overrides, prepare_ablation

        main_cfg = load_config(params=params)
        prepare_ablation(main_cfg, args.ablation, overrides)  # one clear error for a bad name / no --set first
        overrides = ablation_overrides(main_cfg, args.ablation, overrides)
        args.orchestrator = "prefect"  # an ablation is params.yaml + overrides: DVC's outputs stay the main run's
    if args.num_cpus:
        overrides.append(f"compute.ray_num_cpus={args.num_cpus}")
    cfg = load_config(params=params, overrides=overrides)
    preflight(cfg)
    paths = Paths(cfg.compute.out_dir)
    if args.orchestrator == "prefect":
        from flows.pipeline import oskt_pipeline

        rec = oskt_pipeline(params=params, overrides=overrides, ray_address=args.ray_address)
        _print_where(cfg, rec.markdown)
        return 0
    if not os.path.isdir(".dvc"):
        raise OsktError("no .dvc folder here: run from the repository root (dvc init has been done there)")
    if args.overrides or args.num_cpus:
        raise OsktError(
            "--set / --num-cpus are not used with the DVC orchestrator: edit params.yaml or use dvc exp run -S"
        )
    with pipeline_run(cfg, "pipeline", announce=True):
        env = dict(os.environ)
        if args.ray_address:
            env["RAY_ADDRESS"] = args.ray_address
        # dvc.yaml's `python -m flows ...` must be this environment's Python, activated or not
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if args.force else [])]
        log.info("running %s", " ".join(cmd))
        rc = run_group(cmd, env)
        if rc != 0:
            raise OsktError(
                f"dvc repro failed (exit {rc}); the log above names the stage. Rerun `oskt run`: "
                "finished stages and grid cells are kept"
            )
    _print_where(cfg, io.join(paths.report_dir(), "report.md"))
    return 0


def _print_where(cfg: Config, report: str) -> None:
    from oskt.pipeline.tracking import resolve_uri

    print(f"report: {report}")
    if cfg.tracking.enabled:
        print(
            f"mlflow: {resolve_uri(cfg.tracking)} (experiment {cfg.tracking.experiment!r}); "
            f"browse with: mlflow ui --backend-store-uri {resolve_uri(cfg.tracking)}"
        )


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="params file (default params.yaml; written for --profile if missing)")
    p.add_argument("--profile", choices=PROFILES, default=None, help="profile for a new params file (default quick)")
    add_set_arg(p, "prefect orchestrator or --ablation only")
    p.add_argument(
        "--ablation",
        default=None,
        metavar="NAME",
        help="run the OSKT rows again with the --set overrides into <out>/ablations/NAME (Prefect orchestrator, "
        "the main run's teachers reused); `oskt report` then adds a row 'OSKT (NAME)'",
    )
    p.add_argument("--force-params", action="store_true", help="rewrite the params file for --profile")
    p.add_argument(
        "--orchestrator",
        choices=("dvc", "prefect"),
        default="dvc",
        help="dvc: `dvc repro` (stages as processes; the grid stage runs the Prefect flow on Ray); "
        "prefect: the whole-pipeline Prefect flow (as the nightly deployment runs it)",
    )
    p.add_argument("--force", action="store_true", help="dvc repro --force")
    p.add_argument("--ray-address", default=None, help="Ray cluster for the grid (default: local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (prefect orchestrator)")


# ------------------------------------------------------------------------------------------------ registration


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run``, ``stage`` and ``grid`` to the ``oskt`` command (entry point group ``oskt.cli``)."""
    p = sub.add_parser(
        "run",
        help="run the whole pipeline (DVC → Prefect → Ray → MLflow)",
        description="Run the OSKT pipeline end to end and print where the report is.",
    )
    add_run_args(p)
    p.set_defaults(func=run_pipeline)
    s = sub.add_parser(
        "stage",
        help="run one pipeline stage (what dvc.yaml calls)",
        description="Run one stage of the pipeline in this process.",
    )
    add_stage_args(s)
    s.set_defaults(func=run_stage)
    g = sub.add_parser(
        "grid", help="run only the student grid", description="Run the student grid (teachers and chains must exist)."
    )
    add_config_args(g)
    add_engine_args(g)
    g.set_defaults(func=run_stage, stage="students", source=None, width=None)
    from flows.rehearse import add_rehearse_args, run_rehearsal  # issue #18: the paper-scale rehearsal

    r = sub.add_parser(
        "rehearse",
        help="rehearse a paper profile end to end on stand-in data, cut short, and write its cost table",
        description="Run the profile's whole pipeline (every stage and grid cell, full model and input size, a few "
        "iterations per phase) through DVC → Prefect → Ray → MLflow in its own workspace, then its cost table.",
    )
    add_rehearse_args(r)
    r.set_defaults(func=functools.partial(run_rehearsal, run_group=run_group))


def main(argv: list[str] | None = None) -> int:
    """``python -m flows <run|stage|grid> ...`` (``make run`` calls ``python -m flows run --profile quick``)."""
    parser = argparse.ArgumentParser(prog="python -m flows", description="The OSKT pipeline verbs.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    register(sub)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, library request logs")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded(args.func, args)
