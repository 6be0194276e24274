"""``oskt run`` (the whole pipeline through DVC → Prefect → Ray → MLflow), ``oskt stage <name>`` (one stage, what
``dvc.yaml`` calls as ``python -m oskt.pipeline <name>``) and ``oskt grid`` (only the student grid)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from oskt import io
from oskt.cli.common import add_config_args, config_from_args, run_guarded
from oskt.config import PROFILES, Config, dump_config, load_config, read_params
from oskt.errors import OsktError

log = logging.getLogger("oskt.pipeline")

GRID_ENGINE_ENV = "OSKT_GRID_ENGINE"
NUM_CPUS_ENV = "OSKT_RAY_NUM_CPUS"


def _num_cpus(args: argparse.Namespace) -> int | None:
    n = getattr(args, "num_cpus", None) or os.environ.get(NUM_CPUS_ENV)
    return int(n) if n else None


def _target(cfg: Config):  # -> TrackingTarget
    from oskt.pipeline.run import common_tags
    from oskt.pipeline.tracking import target_from_config

    return target_from_config(cfg, common_tags(cfg))


# ------------------------------------------------------------------------------------------------ oskt stage


def run_stage(args: argparse.Namespace) -> int:
    """Run one stage in this process (DVC's ``cmd:``)."""
    from oskt.pipeline import stages
    from oskt.pipeline.engines import no_telemetry
    from oskt.pipeline.preflight import preflight
    from oskt.pipeline.records import Paths

    cfg = config_from_args(args)
    no_telemetry()
    preflight(cfg)
    paths, target = Paths(cfg.compute.out_dir), _target(cfg)
    name = args.stage
    if name == "prepare":
        rec = stages.prepare_data(cfg, paths, target)
        print(f"prepare: {len(rec.datasets)} data sets -> {rec.manifest}")
    elif name == "teacher":
        for source in [args.source] if args.source else cfg.data.sources:
            r = stages.train_teacher(cfg, source, paths, target)
            print(f"teacher {source}: {r.checkpoint}{' (reused)' if r.reused else ''}")
    elif name == "chain":
        sources = [args.source] if args.source else list(cfg.data.sources)
        for source in sources:
            widths = [args.width] if args.width else list(cfg.chain.widths)
            for w in widths:
                r = stages.refine_chain(cfg, source, w, paths, target)
                print(f"chain {source}/w{w}: {r.checkpoint}{' (reused)' if r.reused else ''}")
    elif name == "students":
        engine = args.engine or os.environ.get(GRID_ENGINE_ENV) or "prefect"
        results = stages.train_students(
            cfg, paths, target, engine=engine, ray_address=args.ray_address, num_cpus=_num_cpus(args)
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


STAGES = ("prepare", "teacher", "chain", "students", "report")


def add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=STAGES)
    add_config_args(p)
    p.add_argument("--source", default=None, help="teacher / chain: one source data set (default: all)")
    p.add_argument("--width", type=int, default=None, help="chain: one width (default: all)")
    p.add_argument(
        "--engine",
        choices=("prefect", "ray", "serial"),
        default=None,
        help=f"students: how the grid runs (default ${GRID_ENGINE_ENV} or prefect)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="students: Ray cluster (default $RAY_ADDRESS, compute.ray_address, else a local Ray)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help=f"CPUs of a local Ray (default ${NUM_CPUS_ENV} or all)")


def stage_main(argv: list[str] | None = None) -> int:
    """``python -m oskt.pipeline <stage> [args]``."""
    p = argparse.ArgumentParser(prog="python -m oskt.pipeline", description="Run one OSKT pipeline stage.")
    add_stage_args(p)
    return _guarded(run_stage, p.parse_args(argv))


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


def run_pipeline(args: argparse.Namespace) -> int:
    """Preflight, then the whole pipeline under one MLflow parent run; prints where the report is."""
    from oskt.pipeline.engines import no_telemetry
    from oskt.pipeline.preflight import preflight
    from oskt.pipeline.records import Paths
    from oskt.pipeline.run import parent_env, pipeline_run

    no_telemetry()
    params = ensure_params(args.params or "params.yaml", args.profile, args.force_params)
    overrides = list(args.overrides)
    if args.ablation:
        from oskt.pipeline.ablation import ablation_overrides, prepare_ablation

        main_cfg = load_config(params=params)
        prepare_ablation(main_cfg, args.ablation, overrides)  # one clear error for a bad name / no --set first
        overrides = ablation_overrides(main_cfg, args.ablation, overrides)
        args.orchestrator = "prefect"  # an ablation is params.yaml + overrides: DVC's outputs stay the main run's
    cfg = load_config(params=params, overrides=overrides)
    preflight(cfg)
    paths = Paths(cfg.compute.out_dir)
    if args.orchestrator == "prefect":
        from flows.pipeline import oskt_pipeline

        rec = oskt_pipeline(params=params, overrides=overrides, ray_address=args.ray_address, num_cpus=_num_cpus(args))
        _print_where(cfg, rec.markdown)
        return 0
    if not os.path.isdir(".dvc"):
        raise OsktError("no .dvc folder here: run from the repository root (dvc init has been done there)")
    if args.overrides:
        raise OsktError("--set is not used with the DVC orchestrator: edit params.yaml or use dvc exp run -S")
    with pipeline_run(cfg, "pipeline") as target:
        env = parent_env(target.parent_run_id) if target.enabled else dict(os.environ)
        if args.ray_address:
            env["RAY_ADDRESS"] = args.ray_address
        if args.num_cpus:
            env[NUM_CPUS_ENV] = str(args.num_cpus)
        # dvc.yaml's `python -m oskt.pipeline ...` must be this environment's Python, activated or not
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        cmd = [sys.executable, "-m", "dvc", "repro", *(["--force"] if args.force else [])]
        log.info("running %s", " ".join(cmd))
        rc = subprocess.run(cmd, env=env).returncode
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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key (prefect orchestrator or --ablation only)",
    )
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
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")


def run_main(argv: list[str] | None = None) -> int:
    """``python -m oskt.pipeline.main [--profile quick]`` (what ``make run`` calls)."""
    p = argparse.ArgumentParser(
        prog="python -m oskt.pipeline.main",
        description="Run the OSKT pipeline end to end: DVC → Prefect → Ray → MLflow.",
    )
    add_run_args(p)
    return _guarded(run_pipeline, p.parse_args(argv))


def _guarded(fn, args: argparse.Namespace) -> int:  # noqa: ANN001
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_guarded(fn, args)


# ------------------------------------------------------------------------------------------------ registration


def register(sub: argparse._SubParsersAction) -> None:
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
    g.add_argument("--engine", choices=("prefect", "ray", "serial"), default=None)
    g.add_argument("--ray-address", default=None)
    g.add_argument("--num-cpus", type=int, default=None)
    g.set_defaults(func=run_stage, stage="students", source=None, width=None)
