"""The real grid cell: initialise a student with its method, (distil,) fine-tune it on the target, count its cost.

Cell folder layout (``<out>/students/<cell>/``)::

    init/student_init.pt     the initialised student (method output, before fine-tuning)
    distil/                  distillers across data sets: distillation on the teacher's set first (``CellJob.distil``)
    finetune/                finetune_student's folder (student.pt, last.pt for resuming, history, result.json)
    result.json, job.json    written by oskt.pipeline.grid.run_cell (result.json last = finished)

Methods (``oskt.baselines.INIT_METHODS``): ``oskt`` expands the cell's chain (the widest of the source that fits
the student, chosen when the job was built, SPEC.md §3.3); the distillers (``kdpp``, ``ofa``, ``rsd``) distil from
the source teacher — during the target fine-tune, or first on the source set when the job has a ``distil`` recipe
(``baselines.<method>.epochs``); the others initialise from the (source) teacher, or from nothing (``scratch``), and
fine-tune.
"""

from __future__ import annotations

from typing import Any

from oskt import io
from oskt.errors import OsktError
from oskt.jobs import CellJob, ChainJob, FinetuneJob, RunOptions, TeacherJob, reuse
from oskt.pipeline.records import Paths
from oskt.tracking import NullTracker, Tracker

INIT_FILE = "student_init.pt"


class StageError(OsktError):
    """A stage or cell cannot start: an upstream result is missing or stale."""


class PrefixedTracker(NullTracker):
    """Forwards to another tracker with a name prefix (a sub-phase of the cell: its params cannot collide)."""

    def __init__(self, inner: Tracker, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params({f"{self.prefix}.{k}": v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({f"{self.prefix}/{k}": v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, f"{self.prefix}/{artifact_path}" if artifact_path else self.prefix)


def upstream_checkpoint(paths: Paths, job: TeacherJob | ChainJob) -> str:
    """The checkpoint of a finished upstream job (by the one reuse rule); StageError naming the folder when it is
    missing or was made by another job."""
    out = paths.job_dir(job)
    rec = reuse(out, job)
    if rec is None:
        raise StageError(
            f"the {job.kind} {job.label} is missing or stale in {out}: run its stage first "
            "(`oskt run` / `dvc repro` do; `oskt plan` shows why)"
        )
    return rec.checkpoint


def train_cell(
    job: CellJob, paths: Paths, out_dir: str, tracker: Tracker, run: RunOptions = RunOptions()
) -> tuple[str, dict[str, float]]:
    """Initialise, (distil,) fine-tune and evaluate one cell; returns (student checkpoint, metrics). The metrics'
    ``earlier_seconds`` is the time earlier (killed) attempts spent in the phases this one resumed or reused."""
    from oskt.baselines import INIT_METHODS, InitContext
    from oskt.config import BaselinesConfig
    from oskt.data import build_test_loader
    from oskt.models import save_model
    from oskt.runtime import select_device
    from oskt.train import finetune_student

    teacher_ckpt = upstream_checkpoint(paths, job.teacher) if job.teacher is not None else None
    chain_ckpt = upstream_checkpoint(paths, job.chain) if job.chain is not None else None
    tracker.set_tags(
        {
            "chain_width": str(job.chain.width) if job.chain is not None else "",
            "source": job.source,
            "target": job.target.name,
        }
    )
    target_ds = job.target.load()
    source_ds = job.teacher.data.load() if job.distil is not None else None
    factory = None
    if source_ds is not None:
        records, family, inp, bs = source_ds.train, job.student.family, job.input, job.eval.batch_size

        def factory() -> Any:  # un-augmented loader over the teacher's identities (e.g. KD++'s class centres)
            return build_test_loader(records, inp, bs, family)

    settings = BaselinesConfig(**{job.method: job.settings}) if job.settings is not None else BaselinesConfig()
    ctx = InitContext(
        teacher_ckpt=teacher_ckpt,
        chain_ckpts=(chain_ckpt,) if chain_ckpt else (),
        baselines=settings,
        device=str(select_device(run.device)),
        source_loader_factory=factory,
        example_input_size=(job.input.height, job.input.width),
        seed=job.seed,  # fresh heads / Scratch weights from the cell's seed, not whatever the worker ran before
        finetune_epochs=(job.distil or job.recipe).epochs,  # the run the aux loss trains in (KD++ clips its warm-up)
    )
    num_classes = (source_ds or target_ds).num_train_pids
    init = INIT_METHODS.get(job.method)(ctx, job.student, num_classes)
    init_ckpt = io.join(out_dir, "init", INIT_FILE)
    save_model(init_ckpt, init.model.cpu(), "student", config={"cell": job.key}, extra={"init": init.info})
    tracker.log_params({f"init.{k}": v for k, v in init.info.items() if k != "seconds"})
    tracker.log_metrics({"init_seconds": float(init.info.get("seconds", 0.0))})
    aux = init.aux
    common = {"input": job.input, "eval": job.eval, "seed": job.seed}
    earlier = 0.0
    if job.distil is not None:
        distil = FinetuneJob(upstream=f"{job.key}:distil", data=job.teacher.data, recipe=job.distil, **common)
        r = finetune_student(
            distil, init_ckpt, io.join(out_dir, "distil"), run=run, aux=aux, tracker=PrefixedTracker(tracker, "distil")
        )
        init_ckpt, aux, earlier = r.checkpoint, None, r.earlier_seconds
    finetune = FinetuneJob(
        upstream=f"{job.key}:finetune", data=job.target, recipe=job.recipe, few_shot=job.few_shot, **common
    )
    r = finetune_student(finetune, init_ckpt, io.join(out_dir, "finetune"), run=run, aux=aux, tracker=tracker)
    return r.checkpoint, {**{k: float(v) for k, v in r.metrics.items()}, "earlier_seconds": earlier + r.earlier_seconds}


def complexity(job: CellJob, checkpoint: str) -> dict[str, float]:
    """Backbone parameters and MACs of the checkpoint's model at the job's input size (retrieval path: the
    classifier is not counted; ``oskt.eval.complexity``)."""
    from oskt.eval.complexity import count_complexity
    from oskt.models import load_model

    model, _ = load_model(checkpoint)
    model.eval()
    c = count_complexity(model, (job.input.height, job.input.width))
    return {"params": float(c["params"]), "macs": float(c["macs"])}
