"""The real grid cell: initialise a student with its method, fine-tune it on the target, count its cost.

Cell folder layout (``<out>/students/<cell>/``)::

    init/student_init.pt     the initialised student (method output, before fine-tuning)
    distil/                  KD++ cross-scenario only: distillation on the source set (baselines.kdpp.epochs > 0)
    finetune/                finetune_student's run folder (student.pt, last.pt for resuming, history, metrics)
    metrics.json, cell.json  written by oskt.pipeline.grid.run_cell (metrics.json last = finished)

Methods (``oskt.baselines.INIT_METHODS``): ``oskt`` expands the widest chain of the scenario's source that fits the
student (SPEC.md §3.3); ``kdpp`` distils from the source teacher — during the target fine-tune, or first on the
source set for ``baselines.kdpp.epochs`` epochs when the scenario crosses data sets; the others initialise from the
(source) teacher and fine-tune.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from oskt import io
from oskt.config import Config
from oskt.pipeline.records import GridCell, Paths
from oskt.tracking import NullTracker, Tracker

INIT_FILE = "student_init.pt"


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


def student_spec(cfg: Config, name: str) -> Any:
    """The ``ModelSpec`` of student ``name`` with the teacher's structural options and the configured input size."""
    from oskt.models.spec import parse_spec, spec_options

    return parse_spec(name, cfg.teacher.arch, **spec_options(cfg.teacher, (cfg.data.height, cfg.data.width)))


def upstream(cfg: Config, cell: GridCell, paths: Paths, spec: Any) -> dict[str, Any]:
    """Checkpoints the cell builds on: the source's original teacher and all its chains (the ``oskt`` method picks
    the widest that fits the student, SPEC.md §3.3), and that chain's width for the tags."""
    from oskt.models.spec import select_chain
    from oskt.train.api import CHAIN_FILE, TEACHER_FILE

    width = select_chain(spec, cfg.chain.widths, student_spec(cfg, cfg.teacher.name))
    return {
        "teacher": io.join(paths.teacher_dir(cell.source), TEACHER_FILE),
        "chains": [io.join(paths.chain_dir(cell.source, w), CHAIN_FILE) for w in cfg.chain.widths],
        "chain_width": width,
    }


def train_cell(
    cfg: Config, cell: GridCell, paths: Paths, out_dir: str, tracker: Tracker
) -> tuple[str, dict[str, float]]:
    """Initialise, (distil,) fine-tune and evaluate one cell; returns (student checkpoint, metrics)."""
    from oskt.baselines import INIT_METHODS, InitContext
    from oskt.data import build_test_loader, load_dataset
    from oskt.models import save_model
    from oskt.runtime import select_device
    from oskt.train import finetune_student

    spec = student_spec(cfg, cell.student)
    ups = upstream(cfg, cell, paths, spec)
    tracker.set_tags({"chain_width": str(ups["chain_width"]), "source": cell.source, "target": cell.target})
    target_ds = load_dataset(cell.target, cfg.data)
    # KD++ across data sets with distillation epochs: distil on the source first (BASELINES.md §1.3)
    distil_first = cell.method == "kdpp" and cell.source != cell.target and cfg.baselines.kdpp.epochs > 0
    source_ds = load_dataset(cell.source, cfg.data) if distil_first else None
    factory = None
    if source_ds is not None:
        records, family = source_ds.train, spec.family

        def factory() -> Any:  # un-augmented loader over the teacher's identities, for KD++'s class centres
            return build_test_loader(records, cfg.data, cfg.eval.batch_size, family)

    ctx = InitContext.from_config(
        cfg,
        teacher_ckpt=ups["teacher"],
        chain_ckpts=ups["chains"],
        device=str(select_device(cfg.compute.device)),
        source_loader_factory=factory,
        seed=cell.seed,  # fresh heads / Scratch weights from the cell's seed, not whatever the worker ran before
    )
    num_classes = (source_ds or target_ds).num_train_pids
    init = INIT_METHODS.get(cell.method)(ctx, spec, num_classes)
    init_ckpt = io.join(out_dir, "init", INIT_FILE)
    save_model(init_ckpt, init.model.cpu(), "student", config=cfg.to_dict(), extra={"init": init.info})
    tracker.log_params({f"init.{k}": v for k, v in init.info.items() if k != "seconds"})
    tracker.log_metrics({"init_seconds": float(init.info.get("seconds", 0.0))})
    aux = init.aux
    if distil_first:
        kd = cfg.baselines.kdpp
        distil_cfg = dataclasses.replace(
            cfg, students=dataclasses.replace(cfg.students, epochs=kd.epochs, milestones=())
        )
        r = finetune_student(
            distil_cfg,
            init_ckpt,
            source_ds,
            io.join(out_dir, "distil"),
            seed=cell.seed,
            aux=aux,
            tracker=PrefixedTracker(tracker, "distil"),
        )
        init_ckpt, aux = r.checkpoint, None
    r = finetune_student(
        cfg,
        init_ckpt,
        target_ds,
        io.join(out_dir, "finetune"),
        seed=cell.seed,
        few_shot=cell.few_shot,
        aux=aux,
        tracker=tracker,
    )
    return r.checkpoint, {k: float(v) for k, v in r.metrics.items()}


def complexity(cfg: Config, checkpoint: str) -> dict[str, float]:
    """Backbone parameters and MACs of the checkpoint's model at ``data.height × data.width`` (retrieval path:
    the classifier is not counted)."""
    import torch

    from oskt.models import load_model

    model, _ = load_model(checkpoint)
    model.eval()
    try:  # the project's counter (oskt.eval.complexity), when present
        from oskt.eval.complexity import count_complexity

        c = count_complexity(model, (cfg.data.height, cfg.data.width))
        return {"params": float(c["params"]), "macs": float(c["macs"])}
    except ImportError:
        pass
    params = sum(p.numel() for p in model.backbone.parameters())
    example = torch.zeros(1, 3, cfg.data.height, cfg.data.width)
    try:
        import torch_pruning as tp

        macs, _ = tp.utils.count_ops_and_params(model.backbone, example)
    except Exception:  # fall back to a conv / linear hook counter
        macs = _hook_macs(model.backbone, example)
    return {"params": float(params), "macs": float(macs)}


def _hook_macs(module: Any, example: Any) -> int:
    """MACs of Conv2d and Linear layers for one forward pass."""
    import torch
    from torch import nn

    total = 0

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return total
