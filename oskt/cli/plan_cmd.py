"""``oskt plan``: every job of the configured pipeline, its key and whether it is done, running (a rerun resumes
it), stale (naming the fields that changed) or missing — without running anything, like ``dvc status``."""

from __future__ import annotations

import argparse
import json

from oskt.cli.common import add_config_args, config_from_args


def plan_rows(cfg) -> list[dict]:  # noqa: ANN001 - a Config
    """One row per job: kind, label, key, state, changed fields, folder."""
    from oskt.jobs import CellJob, JobStatus, job_status
    from oskt.pipeline.graph import jobs_from_config
    from oskt.pipeline.records import Paths
    from oskt.pipeline.stages import adoptable

    paths = Paths.of(cfg.compute)
    rows = []
    graph = jobs_from_config(cfg)
    for label, why in graph.skipped:
        rows.append({"kind": "cell", "label": label, "key": "-", "state": "skipped", "changed": [why], "folder": ""})
    for job in graph.jobs():
        out = paths.job_dir(job)
        st = job_status(out, job)
        if st.state != "done" and not isinstance(job, CellJob) and (other := adoptable(job, paths)):
            st = JobStatus("done", (f"finished in {other} (compute.reuse_from): adopted, not retrained",))
        rows.append(
            {"kind": job.kind, "label": job.label, "key": job.key, "state": st.state, "changed": list(st.changed)}
            | {"folder": out}
        )
    return rows


def _plan(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    rows = plan_rows(cfg)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["label"]) for r in rows), default=10)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
        if args.only and r["state"] not in args.only:
            continue
        print(f"{r['kind']:<8} {r['label']:<{width}}  {r['key']}  {r['state']}")
        for change in r["changed"][: args.max_changes]:
            print(f"{'':<8} {'':<{width}}    {change}")
        if len(r["changed"]) > args.max_changes:
            print(f"{'':<8} {'':<{width}}    ... {len(r['changed']) - args.max_changes} more")
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" (of {len(rows)} jobs)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="list every job, its key and whether it is done / stale / missing (runs nothing)",
        description="Every job of the configured pipeline (teachers, chains, grid cells) with its key and state: "
        "done (reused as is), running (started, a rerun resumes it), stale (its folder holds another key's work; "
        "the fields that changed are listed) or missing.",
    )
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--only",
        action="append",
        choices=("done", "running", "stale", "missing", "skipped"),
        help="show only these states (skipped: a combination the method cannot run, with the reason)",
    )
    p.add_argument("--max-changes", type=int, default=6, help="changed fields shown per stale job (default 6)")
    p.set_defaults(func=_plan)
