"""The three training entry points (docs/contracts.md, Training): teacher training, chain refinement and student
fine-tuning. Each writes its folder (resolved config, per-epoch ``last.pt``, final checkpoint(s), ``history.json``,
``metrics.json``), resumes a killed run from ``last.pt`` and returns at once when the folder holds a finished run.

Recipes: ../shared/SPEC.md §4 (losses, optimisers, schedules, refinement) and §5 (student fine-tuning).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from oskt import io
from oskt.config import Config
from oskt.errors import ConfigError
from oskt.runtime import seed_everything, select_device
from oskt.tracking import Tracker
from oskt.train.loop import EpochCallback, LoopOptions, Step, Trainable
from oskt.train.losses import ReIDLoss
from oskt.train.optim import build_optimizer, build_scaler, build_schedule
from oskt.train.phase import (
    Phase,
    TrainResult,
    begin,
    finish,
    finished,
    fit,
    iters_per_epoch,
    metrics_dict,
    run_key,
)

log = logging.getLogger(__name__)

AuxLoss = Callable[[Tensor, Tensor, Any, int], dict[str, Tensor]]
"""``aux(images, pids, out: ReIDOutput, epoch) -> {"name": weighted loss}``; added to the fine-tuning total. An
``nn.Module`` aux has its trainable parameters optimised and its state checkpointed; one with
``prepare(loader, device)`` is given an un-augmented loader over the training records before training."""

TEACHER_FILE = "teacher.pt"
CHAIN_FILE = "chain.pt"
REFINED_TEACHER_FILE = "teacher_refined.pt"
STUDENT_FILE = "student.pt"


# --------------------------------------------------------------------------------------------------- helpers


def teacher_spec(cfg: Config) -> Any:
    """The teacher's ``ModelSpec`` from ``cfg.teacher`` and the input size."""
    from oskt.models.spec import parse_spec, spec_options

    return parse_spec(
        cfg.teacher.name, cfg.teacher.arch, **spec_options(cfg.teacher, (cfg.data.height, cfg.data.width))
    )


def resolve_metric(metric: str, family: str) -> str:
    """``auto`` = the paper's clustering metric per family: Euclidean for CNN, cosine for ViT (SPEC.md §2)."""
    if metric != "auto":
        return metric
    return "euclidean" if family == "resnet" else "cosine"


def resolve_refine_schedule(schedule: str, family: str) -> str:
    """``auto`` = constant refining weight for CNN, linear ramp for ViT (SPEC.md §4.1)."""
    if schedule != "auto":
        return schedule
    return "constant" if family == "resnet" else "linear"


def refine_weight(step: Step, weight: float, schedule: str) -> float:
    """``w(it)``: ``weight`` (constant) or ``weight · it / total_iters`` (linear), SPEC.md §4.1."""
    if schedule == "linear":
        return weight * step.iteration / max(step.total, 1)
    return weight


def _dataset(cfg: Config, dataset: Any) -> Any:
    from oskt.data import load_dataset

    return load_dataset(dataset, cfg.data) if isinstance(dataset, str) else dataset


def _dataset_id(dataset: Any) -> str:
    """A data set argument as it identifies a run: its name (and protocol, ``ReIDDataset.label``)."""
    if dataset is None or isinstance(dataset, str):
        return dataset or ""
    return dataset.label


def _trainable(
    cfg: Config,
    phase: str,
    modules: dict[str, nn.Module],
    optimised: Iterable[tuple[str, nn.Parameter]],
    losses: Sequence[ReIDLoss],
    epochs: int,
    milestones: Sequence[int],
    device: torch.device,
) -> Trainable:
    train = dataclasses.replace(cfg.train, lr=cfg.phase_lr(phase))  # the phase's base rate, the rest is train's
    optimizer = build_optimizer(optimised, train)
    centers = [(lo.center, lo.center_weight) for lo in losses if lo.center is not None]
    center_opt = (
        torch.optim.SGD([p for c, _ in centers for p in c.parameters()], lr=cfg.train.center_lr) if centers else None
    )
    return Trainable(
        modules=modules,
        optimizer=optimizer,
        schedule=build_schedule(optimizer, train, epochs, milestones),
        scaler=build_scaler(device, cfg.train.amp),
        centers=centers,
        center_optimizer=center_opt,
    )


def _options(cfg: Config, loader: Any, epochs: int, seed: int, device: torch.device, desc: str) -> LoopOptions:
    return LoopOptions(
        epochs=epochs,
        iters_per_epoch=iters_per_epoch(loader, cfg.train.max_iters_per_epoch),
        seed=seed,
        device=device,
        amp=cfg.train.amp,
        grad_clip=cfg.train.grad_clip,
        progress=cfg.train.progress,
        desc=desc,
    )


def _evaluator(cfg: Config, model: Any, ds: Any, device: torch.device) -> Callable[[], dict[str, float]]:
    from oskt.eval import evaluate

    def run() -> dict[str, float]:
        was = model.training
        try:
            return metrics_dict(evaluate(model, ds, cfg.data, cfg.eval, model.spec.family, device))
        finally:
            model.train(was)

    return run


def _prefixed(parts: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}{k}": v for k, v in parts.items() if k != "total"}


# --------------------------------------------------------------------------------------------------- teacher


def train_teacher(
    cfg: Config,
    dataset: Any,
    out_dir: str,
    *,
    tracker: Tracker | None = None,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train the teacher with the family's recipe (SPEC.md §4.2–4.3; epochs / milestones / seed from
    ``cfg.teacher``) and evaluate it on the data set's query / gallery.

    Args:
        cfg: the resolved config.
        dataset: a ``ReIDDataset`` or the name of one in ``cfg.data.datasets``.
        out_dir: the run's folder (``teacher.pt``, ``metrics.json``, ...).
        tracker: where params / per-epoch metrics / artifacts go (default: nowhere).
        resume: continue from ``out_dir/last.pt`` and return a finished run at once.
        callbacks: extra ``callback(epoch, record)`` hooks, run after each epoch's checkpoint.
    """
    from oskt.data import build_train_loader
    from oskt.models import build_model, load_pretrained, save_model

    ckpt_path = io.join(out_dir, TEACHER_FILE)
    key = run_key(cfg, "teacher", {"dataset": _dataset_id(dataset)})
    if resume and (done := finished(out_dir, ckpt_path, key)) is not None:
        return done
    ds = _dataset(cfg, dataset)
    device = select_device(cfg.compute.device)
    seed = cfg.teacher.seed
    seed_everything(seed)
    model = build_model(teacher_spec(cfg), ds.num_train_pids)
    if cfg.teacher.pretrained:
        load_pretrained(model, cfg.teacher.pretrained)
    model.to(device)
    loss = ReIDLoss(cfg.train, ds.num_train_pids, model.spec.feat_dim).to(device)
    loader = build_train_loader(ds.train, cfg.data, cfg.train, cfg.teacher.family, seed)
    tr = _trainable(
        cfg,
        "teacher",
        {"model": model, "loss": loss},
        model.named_parameters(),
        [loss],
        cfg.teacher.epochs,
        cfg.teacher.milestones,
        device,
    )

    def loss_fn(images: Tensor, pids: Tensor, step: Step) -> dict[str, Tensor]:
        return loss(model(images), pids)

    ph = Phase(
        "teacher",
        cfg,
        out_dir,
        tr,
        loader,
        loss_fn,
        _options(cfg, loader, cfg.teacher.epochs, seed, device, "teacher"),
        evaluate=_evaluator(cfg, model, ds, device),
        callbacks=callbacks,
        spec=model.spec.to_dict(),
        key=key,
    )
    ph.tracker = begin(cfg, out_dir, tracker, {"phase": "teacher", "dataset": ds.name})
    history, seconds = fit(ph, resume)
    save_model(ckpt_path, model, "teacher", config=cfg.to_dict(), extra={"dataset": ds.name})
    return finish(ph, ckpt_path, ph.evaluate(), history, seconds)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------- chain


def refine_chain(
    cfg: Config,
    teacher_ckpt: str,
    width: int,
    out_dir: str,
    *,
    tracker: Tracker | None = None,
    resume: bool = True,
    dataset: Any = None,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Cluster the teacher into a chain of ``width`` (SPEC.md §2), then refine teacher and S-Student jointly with
    ``L = ReID_T + ReID_S + w(it)·R`` (SPEC.md §4.1; ``cfg.chain`` epochs / milestones / seed / weight schedule).
    ``chain.epochs == 0`` clusters only.

    Writes ``chain.pt`` (returned as the checkpoint) and ``teacher_refined.pt``; the metrics are the refined
    teacher's on the data set's query / gallery.

    Args:
        cfg: the resolved config.
        teacher_ckpt: the trained teacher (``kind="teacher"``).
        width: chain width (ResNet stem width / ViT dim).
        out_dir: the run's folder.
        tracker: where params / metrics / artifacts go.
        resume: continue from ``last.pt`` and return a finished run at once.
        dataset: the data set to refine on (default: the one the teacher was trained on, else
            ``cfg.data.sources[0]``).
        callbacks: extra epoch hooks, run after each epoch's checkpoint.
    """
    from oskt.chain import RefineModel, build_chain, save_chain
    from oskt.data import build_train_loader
    from oskt.models import load_model, save_model

    chain_path = io.join(out_dir, CHAIN_FILE)
    teacher_path = io.join(out_dir, REFINED_TEACHER_FILE)
    key = run_key(cfg, "chain", {"teacher": teacher_ckpt, "width": width, "dataset": _dataset_id(dataset)})
    if resume and io.exists(teacher_path) and (done := finished(out_dir, chain_path, key)) is not None:
        return done
    teacher, tckpt = load_model(teacher_ckpt, kind="teacher")
    ds = _dataset(cfg, dataset or tckpt.get("extra", {}).get("dataset") or cfg.data.sources[0])
    if teacher.num_classes != ds.num_train_pids:
        raise ConfigError(
            f"teacher {teacher_ckpt!r} classifies {teacher.num_classes} identities but {ds.name!r} "
            f"has {ds.num_train_pids}: refine on the teacher's training set"
        )
    family = teacher.spec.family
    device = select_device(cfg.compute.device)
    seed = cfg.chain.seed
    seed_everything(seed)
    chain = build_chain(teacher, width, resolve_metric(cfg.chain.metric, family), cfg.chain.init, seed)
    refine = RefineModel(teacher, chain, ds.num_train_pids).to(device)
    epochs = cfg.chain.epochs
    tracker = begin(cfg, out_dir, tracker, {"phase": "chain", "dataset": ds.name, "chain.width": width})
    loss_t = ReIDLoss(cfg.train, ds.num_train_pids, teacher.spec.feat_dim).to(device)
    loss_s = ReIDLoss(cfg.train, ds.num_train_pids, chain.chain_spec.feat_dim).to(device)
    tr = _trainable(
        cfg,
        "chain",
        {"model": refine, "loss_t": loss_t, "loss_s": loss_s},
        refine.named_parameters(),
        [loss_t, loss_s],
        max(epochs, 1),
        cfg.chain.milestones,
        device,
    )
    schedule = resolve_refine_schedule(cfg.chain.refine_schedule, family)

    def loss_fn(images: Tensor, pids: Tensor, step: Step) -> dict[str, Tensor]:
        t_out, s_out = refine(images)
        pt, ps = loss_t(t_out, pids), loss_s(s_out, pids)
        r = refine.refining_loss()
        w = refine_weight(step, cfg.chain.refine_weight, schedule)
        return {**_prefixed(pt, "t_"), **_prefixed(ps, "s_"), "refine": r, "total": pt["total"] + ps["total"] + w * r}

    loader = build_train_loader(ds.train, cfg.data, cfg.train, family, seed)
    ph = Phase(
        "chain",
        cfg,
        out_dir,
        tr,
        loader,
        loss_fn,
        _options(cfg, loader, epochs, seed, device, f"chain w{width}"),
        evaluate=_evaluator(cfg, teacher, ds, device),
        tracker=tracker,
        callbacks=callbacks,
        spec=chain.chain_spec.to_dict(),
        key=key,
    )
    history, seconds = fit(ph, resume) if epochs > 0 else ([], 0.0)
    save_model(
        teacher_path, teacher, "teacher", config=cfg.to_dict(), extra={"dataset": ds.name, "refined_with_chain": width}
    )
    refine.sync_chain()  # the chain's teacher snapshot must reflect the teacher after its last step
    save_chain(chain_path, chain, config=cfg.to_dict())
    # the teacher's metrics, plus the S-Student's (s_*): the chain network before any expansion or fine-tuning
    s_metrics = _evaluator(cfg, refine.s_student(), ds, device)()
    metrics = {**ph.evaluate(), **{f"s_{k}": v for k, v in s_metrics.items()}}  # type: ignore[misc]
    return finish(ph, chain_path, metrics, history, seconds)


# --------------------------------------------------------------------------------------------------- student


def finetune_student(
    cfg: Config,
    init_ckpt: str,
    dataset: Any,
    out_dir: str,
    *,
    seed: int,
    few_shot: float = 1.0,
    aux: AuxLoss | None = None,
    tracker: Tracker | None = None,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Fine-tune an initialised student on ``dataset`` with the family's recipe (SPEC.md §5; epochs / milestones
    from ``cfg.students``) and evaluate it on the data set's query / gallery.

    The student's weights and heads are used as the init method left them; only when the classifier's size
    differs from the number of (few-shot) training identities is a fresh classifier made.

    Args:
        cfg: the resolved config.
        init_ckpt: the initialised student checkpoint.
        dataset: a ``ReIDDataset`` or a data set name.
        out_dir: the run's folder (``student.pt``, ``metrics.json``, ...).
        seed: run seed (data order, augmentation, few-shot subset).
        few_shot: fraction of the training identities to fine-tune on (1.0 = all).
        aux: an auxiliary loss (e.g. :class:`~oskt.train.kd.KDPPLoss`) added to the total.
        tracker: where params / metrics / artifacts go.
        resume: continue from ``last.pt`` and return a finished run at once.
        callbacks: extra epoch hooks, run after each epoch's checkpoint.
    """
    from oskt.data import build_test_loader, build_train_loader, few_shot_ids, subset_records
    from oskt.models import load_model, save_model

    ckpt_path = io.join(out_dir, STUDENT_FILE)
    inputs = {"init": init_ckpt, "dataset": _dataset_id(dataset), "seed": seed, "few_shot": few_shot}
    key = run_key(cfg, "student", {**inputs, "aux": type(aux).__name__ if aux is not None else None})
    if resume and (done := finished(out_dir, ckpt_path, key)) is not None:
        return done
    if not 0.0 < few_shot <= 1.0:
        raise ConfigError(f"few_shot={few_shot!r} is not allowed: expected a fraction in (0, 1]")
    ds = _dataset(cfg, dataset)
    device = select_device(cfg.compute.device)
    seed_everything(seed)
    model, _ = load_model(init_ckpt)
    records = ds.train
    if few_shot < 1.0:
        ids = few_shot_ids(sorted({r.pid for r in records}), few_shot, seed)
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
    loss = ReIDLoss(cfg.train, num_classes, model.spec.feat_dim).to(device)
    modules: dict[str, nn.Module] = {"model": model, "loss": loss}
    named: Iterable[tuple[str, nn.Parameter]] = model.named_parameters()
    if isinstance(aux, nn.Module):
        aux.to(device)
        if hasattr(aux, "prepare"):
            aux.prepare(build_test_loader(records, cfg.data, cfg.eval.batch_size, family), device)
        modules["aux"] = aux
        named = itertools.chain(named, aux.named_parameters(prefix="aux"))
    elif aux is not None and hasattr(aux, "prepare"):
        aux.prepare(build_test_loader(records, cfg.data, cfg.eval.batch_size, family), device)
    tracker = begin(
        cfg,
        out_dir,
        tracker,
        {
            "phase": "student",
            "dataset": ds.name,
            "student.seed": seed,
            "student.few_shot": few_shot,
            "student.spec": model.spec.name,
        },
    )
    tr = _trainable(cfg, "students", modules, named, [loss], cfg.students.epochs, cfg.students.milestones, device)

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

    loader = build_train_loader(records, cfg.data, cfg.train, family, seed)
    ph = Phase(
        "student",
        cfg,
        out_dir,
        tr,
        loader,
        loss_fn,
        _options(cfg, loader, cfg.students.epochs, seed, device, f"student {model.spec.name}"),
        evaluate=_evaluator(cfg, model, ds, device),
        tracker=tracker,
        callbacks=callbacks,
        spec=model.spec.to_dict(),
        key=key,
    )
    history, seconds = fit(ph, resume)
    save_model(
        ckpt_path,
        model,
        "student",
        config=cfg.to_dict(),
        extra={"dataset": ds.name, "seed": seed, "few_shot": few_shot, "init": init_ckpt},
    )
    return finish(ph, ckpt_path, ph.evaluate(), history, seconds)  # type: ignore[misc]
