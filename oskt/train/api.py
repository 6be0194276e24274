"""The three training entry points (docs/contracts.md, Training): teacher training, chain refinement and student
fine-tuning. Each takes its job (``oskt.jobs``: exactly what the phase reads) and a folder, goes through the one
phase path of :mod:`oskt.train.phase` (reuse, resume from ``last.pt``, ``result.json`` last) and returns a
:class:`~oskt.train.phase.TrainResult`.

Recipes: ../shared/SPEC.md §4 (losses, optimisers, schedules, refinement) and §5 (student fine-tuning).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from oskt import io
from oskt.config import EvalConfig, InputConfig
from oskt.errors import ConfigError
from oskt.jobs import ChainJob, FinetuneJob, RunOptions, TeacherJob, describe, job_key
from oskt.runtime import seed_everything, select_device
from oskt.tracking import Tracker
from oskt.train.loop import EpochCallback, Step
from oskt.train.losses import ReIDLoss
from oskt.train.phase import (
    Phase,
    PhaseRun,
    TrainResult,
    close_phase,
    load_checked,
    metrics_dict,
    open_phase,
    peak_memory,
    train_phase,
)

log = logging.getLogger(__name__)

AuxLoss = Callable[[Tensor, Tensor, Any, int], dict[str, Tensor]]
"""``aux(images, pids, out: ReIDOutput, epoch) -> {"name": weighted loss}``; added to the fine-tuning total. An
``nn.Module`` aux has its trainable parameters optimised and its state checkpointed; one with
``prepare(loader, device)`` is given an un-augmented loader over the training records before training, one with
``attach(model)`` is given the student being trained (e.g. to hook its intermediate stages)."""

TEACHER_FILE = "teacher.pt"
CHAIN_FILE = "chain.pt"
REFINED_TEACHER_FILE = "teacher_refined.pt"
STUDENT_FILE = "student.pt"


def refine_weight(step: Step, weight: float, schedule: str) -> float:
    """``w(it)``: ``weight`` (constant) or ``weight · it / total_iters`` (linear), SPEC.md §4.1."""
    if schedule == "linear":
        return weight * step.iteration / max(step.total, 1)
    return weight


def _evaluator(
    input: InputConfig,  # noqa: A002 - the settings' name
    eval: EvalConfig,  # noqa: A002
    model: Any,
    ds: Any,
    device: torch.device,
) -> Callable[[], dict[str, float]]:
    from oskt.eval import evaluate

    def run() -> dict[str, float]:
        was = model.training
        try:
            return metrics_dict(evaluate(model, ds, input, eval, model.spec.family, device))
        finally:
            model.train(was)

    return run


def _prefixed(parts: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in parts.items() if k != "total"}


# --------------------------------------------------------------------------------------------------- teacher


def train_teacher(
    job: TeacherJob,
    out_dir: str,
    *,
    run: RunOptions = RunOptions(),
    tracker: Tracker | None = None,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train the teacher with the family's recipe (SPEC.md §4.2–4.3) and evaluate it on the data set's query /
    gallery; writes ``teacher.pt``.

    Args:
        job: model spec, data set, recipe, seed, pretrained weights.
        out_dir: the run's folder (``teacher.pt``, ``result.json``, ...).
        run: device, progress output.
        tracker: where params / per-epoch metrics go (default: nowhere).
        resume: continue from ``out_dir/last.pt`` and return a finished run at once.
        callbacks: extra ``callback(epoch, record)`` hooks, run after each epoch's checkpoint.
    """
    from oskt.models import build_model, load_pretrained, save_model

    done, tracker = open_phase(job, out_dir, resume=resume, tracker=tracker, params={"phase": "teacher"})
    if done is not None:
        return done
    ds = load_checked(job.data, job.input.bad_images, run, out_dir)
    device = select_device(run.device)
    seed_everything(job.seed)
    model = build_model(job.model, ds.num_train_pids)
    if job.pretrained:
        load_pretrained(model, job.pretrained)
    model.to(device)
    loss = ReIDLoss(job.recipe, ds.num_train_pids, model.spec.feat_dim).to(device)
    evaluate = _evaluator(job.input, job.eval, model, ds, device)

    def loss_fn(images: Tensor, pids: Tensor, step: Step) -> dict[str, Tensor]:
        return loss(model(images), pids)

    ph = Phase(
        "teacher",
        job,
        out_dir,
        {"model": model, "loss": loss},
        model.named_parameters(),
        [loss],
        loss_fn,
        ds.train,
        model.spec.family,
        job.recipe,
        job.input,
        job.seed,
        spec=model.spec.to_dict(),
        evaluate=evaluate,
        desc="teacher",
    )
    phase = train_phase(ph, run=run, device=device, tracker=tracker, resume=resume, callbacks=callbacks)
    ckpt = io.join(out_dir, TEACHER_FILE)
    save_model(ckpt, model, "teacher", config=describe(job), extra={"dataset": ds.name, "job_key": job_key(job)})
    files = {"checkpoint": ckpt}
    metrics = {**evaluate(), **peak_memory(device)}
    return close_phase("teacher", job, out_dir, files=files, metrics=metrics, phase=phase, tracker=tracker)


# --------------------------------------------------------------------------------------------------- chain


def refine_chain(
    job: ChainJob,
    teacher_ckpt: str,
    out_dir: str,
    *,
    run: RunOptions = RunOptions(),
    tracker: Tracker | None = None,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Cluster the teacher into a chain of ``job.width`` (SPEC.md §2), then refine teacher and S-Student jointly
    with ``L = ReID_T + ReID_S + w(it)·R`` (SPEC.md §4.1) on the teacher's training set (``job.data``);
    ``recipe.epochs == 0`` clusters only.

    Writes ``chain.pt`` (the returned checkpoint) and ``teacher_refined.pt`` (``files["refined_teacher"]``); the
    metrics are the refined teacher's on the data set's query / gallery, plus the S-Student's (``s_*``).

    Args:
        job: the chain job (its teacher's identity, width, clustering and refinement settings).
        teacher_ckpt: the trained teacher (``kind="teacher"``) the job's teacher identity names.
        out_dir: the run's folder.
        run: device, progress output.
        tracker: where params / metrics go.
        resume: continue from ``last.pt`` and return a finished run at once.
        callbacks: extra epoch hooks, run after each epoch's checkpoint.
    """
    from oskt.chain import RefineModel, build_chain, save_chain
    from oskt.models import load_model, save_model

    done, tracker = open_phase(
        job, out_dir, resume=resume, tracker=tracker, params={"phase": "chain", "chain.width": job.width}
    )
    if done is not None:
        return done
    teacher, _ = load_model(teacher_ckpt, kind="teacher")
    ds = load_checked(job.data, job.input.bad_images, run, out_dir)
    if teacher.num_classes != ds.num_train_pids:
        raise ConfigError(
            f"teacher {teacher_ckpt!r} classifies {teacher.num_classes} identities but {ds.name!r} "
            f"has {ds.num_train_pids}: refine on the teacher's training set"
        )
    device = select_device(run.device)
    seed_everything(job.seed)
    chain = build_chain(teacher, job.width, job.metric, job.init, job.seed)
    refine = RefineModel(teacher, chain, ds.num_train_pids).to(device)
    loss_t = ReIDLoss(job.recipe, ds.num_train_pids, teacher.spec.feat_dim).to(device)
    loss_s = ReIDLoss(job.recipe, ds.num_train_pids, chain.chain_spec.feat_dim).to(device)

    def loss_fn(images: Tensor, pids: Tensor, step: Step) -> dict[str, Tensor]:
        t_out, s_out = refine(images)
        pt, ps = loss_t(t_out, pids), loss_s(s_out, pids)
        r = refine.refining_loss()
        w = refine_weight(step, job.refine_weight, job.refine_schedule)
        return {**_prefixed(pt, "t_"), **_prefixed(ps, "s_"), "refine": r, "total": pt["total"] + ps["total"] + w * r}

    evaluate = _evaluator(job.input, job.eval, teacher, ds, device)
    ph = Phase(
        "chain",
        job,
        out_dir,
        {"model": refine, "loss_t": loss_t, "loss_s": loss_s},
        refine.named_parameters(),
        [loss_t, loss_s],
        loss_fn,
        ds.train,
        teacher.spec.family,
        job.recipe,
        job.input,
        job.seed,
        spec=chain.chain_spec.to_dict(),
        evaluate=evaluate,
        desc=f"chain w{job.width}",
    )
    phase = PhaseRun()
    if job.recipe.epochs > 0:
        phase = train_phase(ph, run=run, device=device, tracker=tracker, resume=resume, callbacks=callbacks)
    chain_path, teacher_path = io.join(out_dir, CHAIN_FILE), io.join(out_dir, REFINED_TEACHER_FILE)
    extra = {"dataset": ds.name, "refined_with_chain": job.width, "job_key": job_key(job)}
    save_model(teacher_path, teacher, "teacher", config=describe(job), extra=extra)
    refine.sync_chain()  # the chain's teacher snapshot must reflect the teacher after its last step
    save_chain(chain_path, chain, config=describe(job))
    # the teacher's metrics, plus the S-Student's (s_*): the chain network before any expansion or fine-tuning
    s_metrics = _evaluator(job.input, job.eval, refine.s_student(), ds, device)()
    metrics = {**evaluate(), **{f"s_{k}": v for k, v in s_metrics.items()}, **peak_memory(device)}
    files = {"checkpoint": chain_path, "refined_teacher": teacher_path}
    return close_phase("chain", job, out_dir, files=files, metrics=metrics, phase=phase, tracker=tracker)


# --------------------------------------------------------------------------------------------------- student


def finetune_student(
    job: FinetuneJob,
    init_ckpt: str,
    out_dir: str,
    *,
    run: RunOptions = RunOptions(),
    aux: AuxLoss | None = None,
    tracker: Tracker | None = None,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Fine-tune an initialised student on ``job.data`` with the family's recipe (SPEC.md §5) and evaluate it on the
    data set's query / gallery; writes ``student.pt``.

    The student's weights and heads are used as the init method left them; only when the classifier's size
    differs from the number of (few-shot) training identities is a fresh classifier made.

    Args:
        job: data set, recipe, seed, few-shot fraction and the identity of the init checkpoint (``upstream``).
        init_ckpt: the initialised student checkpoint.
        out_dir: the run's folder (``student.pt``, ``result.json``, ...).
        run: device, progress output.
        aux: an auxiliary loss (e.g. :class:`~oskt.train.kd.KDPPLoss`) added to the total; its identity is the
            caller's to put into ``job.upstream``.
        tracker: where params / metrics go.
        resume: continue from ``last.pt`` and return a finished run at once.
        callbacks: extra epoch hooks, run after each epoch's checkpoint.
    """
    from oskt.data import build_test_loader, few_shot_ids, subset_records
    from oskt.models import load_model, save_model

    if not 0.0 < job.few_shot <= 1.0:
        raise ConfigError(f"few_shot={job.few_shot!r} is not allowed: expected a fraction in (0, 1]")
    params = {"phase": "student", "student.seed": job.seed, "student.few_shot": job.few_shot}
    done, tracker = open_phase(job, out_dir, resume=resume, tracker=tracker, params=params)
    if done is not None:
        return done
    ds = load_checked(job.data, job.input.bad_images, run, out_dir)
    device = select_device(run.device)
    seed_everything(job.seed)
    model, _ = load_model(init_ckpt)
    records = ds.train
    if job.few_shot < 1.0:
        ids = few_shot_ids(sorted({r.pid for r in records}), job.few_shot, job.seed)
        records = subset_records(records, ids)
    num_classes = len({r.pid for r in records})
    if model.num_classes != num_classes:
        log.info(
            "student classifier has %d outputs, %d training identities: fresh classifier",
            model.num_classes,
            num_classes,
        )
        model.reset_classifier(num_classes)
    model.to(device)
    family = model.spec.family
    tracker.set_tags({"student.spec": model.spec.name})
    loss = ReIDLoss(job.recipe, num_classes, model.spec.feat_dim).to(device)
    modules: dict[str, nn.Module] = {"model": model, "loss": loss}
    named: Iterable[tuple[str, nn.Parameter]] = model.named_parameters()
    if aux is not None and hasattr(aux, "attach"):
        aux.attach(model)
    if isinstance(aux, nn.Module):
        aux.to(device)
        modules["aux"] = aux
        named = itertools.chain(named, aux.named_parameters(prefix="aux"))
    if aux is not None and hasattr(aux, "prepare"):
        aux.prepare(build_test_loader(records, job.input, job.eval.batch_size, family), device)

    def loss_fn(images: Tensor, pids: Tensor, step: Step) -> dict[str, Tensor]:
        out = model(images)
        parts = loss(out, pids)
        if aux is not None:
            extra = aux(images, pids, out, step.epoch)
            parts = {
                **parts,
                **{f"aux_{k}": v for k, v in extra.items()},
                "total": parts["total"] + sum(extra.values()),
            }
        return parts

    evaluate = _evaluator(job.input, job.eval, model, ds, device)
    ph = Phase(
        "student",
        job,
        out_dir,
        modules,
        named,
        [loss],
        loss_fn,
        records,
        family,
        job.recipe,
        job.input,
        job.seed,
        spec=model.spec.to_dict(),
        evaluate=evaluate,
        desc=f"student {model.spec.name}",
    )
    phase = train_phase(ph, run=run, device=device, tracker=tracker, resume=resume, callbacks=callbacks)
    ckpt = io.join(out_dir, STUDENT_FILE)
    extra = {"dataset": ds.name, "seed": job.seed, "few_shot": job.few_shot, "init": init_ckpt, "job_key": job_key(job)}
    save_model(ckpt, model, "student", config=describe(job), extra=extra)
    return close_phase(
        "student",
        job,
        out_dir,
        files={"checkpoint": ckpt},
        metrics={**evaluate(), **peak_memory(device)},
        phase=phase,
        tracker=tracker,
    )
