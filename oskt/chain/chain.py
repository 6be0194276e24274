"""The weight chain (SPEC.md §1, §2): one chain row per cluster with the teacher's full input width.

``WeightChain`` holds, as an ``nn.Module``:

* ``genes``: one trainable tensor per clustered teacher weight, ``[repeat·M, N_in(teacher), k…]``, initialised to
  cluster means (``init="center"``) of the *unnormalised* teacher rows; for the ViT also full-width LN / bias genes
  initialised as copies of the teacher's (SPEC.md §2.3);
* ``labels``: one label vector (buffer) per partition;
* ``snapshot``: buffers with the teacher tensors that expansion needs but the chain does not train (CNN BN affine
  and running stats, ViT patch embedding / tokens / positions and ``attn.proj`` biases). ``RefineModel`` refreshes
  them from the refined teacher, so a saved chain is self-contained for ``expand``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oskt.chain.cluster import cluster_partition, resolve_metric, row_features
from oskt.chain.plan import Plan, make_plan
from oskt.checkpoint import load_checkpoint, save_checkpoint
from oskt.errors import CheckpointError, SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.spec import ModelSpec
from oskt.models.vit import has_dw


def key(name: str) -> str:
    """Module-safe key for a dotted name."""
    return name.replace(".", "__")


class _Bag(nn.Module):
    """A plain container of buffers."""

    def get(self, name: str) -> Tensor:
        return getattr(self, key(name))

    def put(self, name: str, value: Tensor) -> None:
        self.register_buffer(key(name), value)


def teacher_shapes(spec: ModelSpec) -> dict[str, torch.Size]:
    """Backbone tensor shapes of ``spec`` (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in build_model(spec, 1).backbone.state_dict().items()}


class WeightChain(nn.Module):
    """Chain tensors + labels of one chain width, built from a teacher of ``teacher_spec``.

    Args:
        teacher_spec: the teacher's spec (a reduced teacher is allowed; chain multipliers are the teacher's).
        width: chain width (ResNet stem width ``in_planes``; ViT embedding dim).
        metric: clustering features used (recorded).
        init: ``center`` or ``random`` (recorded).
    """

    def __init__(self, teacher_spec: ModelSpec, width: int, metric: str = "auto", init: str = "center") -> None:
        super().__init__()
        self.teacher_spec = teacher_spec
        self.width = int(width)
        self.chain_spec = teacher_spec.chain_spec(self.width)
        self.metric = resolve_metric(metric, teacher_spec.family)
        self.init = init
        self.plan: Plan = make_plan(teacher_spec)
        _check_chain(teacher_spec, self.chain_spec, self.plan)
        shapes = teacher_shapes(teacher_spec)
        self.genes = nn.ParameterDict()
        self.labels = _Bag()
        self.snapshot = _Bag()
        for p in self.plan.parts:
            self.labels.put(p.name, torch.zeros(p.width(teacher_spec), dtype=torch.long))
        for r in self.plan.rows:
            m = self.plan.part(r.out).width(self.chain_spec)
            self.genes[key(r.param)] = nn.Parameter(torch.zeros(r.repeat * m, *shapes[r.param][1:]))
        for v in self.plan.vectors:
            if v.gene:
                self.genes[key(v.param)] = nn.Parameter(torch.zeros(shapes[v.param]))
        for name in self.snapshot_names():
            self.snapshot.put(name, torch.zeros(shapes[name]))

    def snapshot_names(self) -> list[str]:
        """Teacher tensors kept as buffers for expansion."""
        names = [v.param for v in self.plan.vectors if v.expand_from_teacher]
        return names + [b.param for b in self.plan.bn_buffers] + list(self.plan.shared)

    def gene(self, name: str) -> nn.Parameter:
        return self.genes[key(name)]

    def label(self, part: str) -> Tensor:
        return self.labels.get(part)

    def num_clusters(self, part: str) -> int:
        return self.plan.part(part).width(self.chain_spec)

    def row_labels(self, part: str, repeat: int = 1) -> Tensor:
        """Chain row of every teacher row of a ``repeat``-fold weight (q / k / v blocks share the labels)."""
        lab, m = self.label(part), self.num_clusters(part)
        return torch.cat([lab + j * m for j in range(repeat)]) if repeat > 1 else lab

    @torch.no_grad()
    def capture_teacher(self, teacher: ReIDModel) -> None:
        """Copy the teacher tensors expansion needs into ``snapshot`` (call after refining the teacher)."""
        own = teacher.backbone.state_dict()
        for name in self.snapshot_names():
            self.snapshot.get(name).copy_(own[name])

    @torch.no_grad()
    def init_from_teacher(self, teacher: ReIDModel, labels: dict[str, Tensor | np.ndarray]) -> None:
        """Set labels, chain rows = cluster means of the teacher rows, genes = copies of the teacher's vectors."""
        params = dict(teacher.backbone.named_parameters())
        for p in self.plan.parts:
            lab = torch.as_tensor(np.asarray(labels[p.name]), dtype=torch.long, device=self.label(p.name).device)
            m = self.num_clusters(p.name)
            if lab.shape != self.label(p.name).shape or lab.min() < 0 or lab.max() >= m:
                raise SpecError(f"labels of {p.name} must be {self.label(p.name).numel()} values in [0, {m})")
            if torch.bincount(lab, minlength=m).min() == 0:
                raise SpecError(f"labels of {p.name}: every one of the {m} clusters must be non-empty")
            self.label(p.name).copy_(lab)
        for r in self.plan.rows:
            w = params[r.param]
            idx = self.row_labels(r.out, r.repeat).to(w.device)
            sums = torch.zeros_like(self.gene(r.param)).index_add_(0, idx, w.to(self.gene(r.param).dtype))
            counts = torch.bincount(idx, minlength=sums.shape[0]).to(sums.dtype)
            self.gene(r.param).copy_(sums / counts.view(-1, *[1] * (sums.dim() - 1)))
        for v in self.plan.vectors:
            if v.gene:
                self.gene(v.param).copy_(params[v.param])
        self.capture_teacher(teacher)

    def extra_repr(self) -> str:
        return f"teacher={self.teacher_spec.name}, width={self.width}, metric={self.metric}, init={self.init}"


def _check_chain(teacher: ModelSpec, chain: ModelSpec, plan: Plan) -> None:
    if teacher.family == "vit" and not has_dw(teacher):
        raise SpecError(
            f"ViT teacher {teacher.name} (vit_stem='plain', reduced width) has no dw projection: build "
            "chains from a teacher with vit_stem='teacher' (students may still use the plain stem)"
        )
    for p in plan.parts:
        n, m = p.width(teacher), p.width(chain)
        if not 1 <= m <= n or m % p.heads:
            raise SpecError(
                f"chain width {chain.layer_widths()} does not fit teacher {teacher.layer_widths()} "
                f"(partition {p.name}: {m} clusters for {n} channels)"
            )


def build_chain(
    teacher: ReIDModel, width: int, metric: str = "auto", init: str = "center", seed: int = 0
) -> WeightChain:
    """Cluster the teacher's rows and initialise the chain (SPEC.md §2).

    Args:
        teacher: the trained teacher (its ``spec`` may be a reduced teacher).
        width: chain width (ResNet ``in_planes`` with the teacher's multipliers; ViT dim).
        metric: ``auto`` | ``euclidean`` | ``cosine`` (clustering features, SPEC.md §2.1).
        init: ``center`` (Ward clusters, the paper) or ``random`` (random-assignment ablation, seeded).
        seed: seed of the random assignment.
    """
    chain = WeightChain(teacher.spec, width, metric, init)
    chain.to(next(teacher.parameters()).device)
    params = dict(teacher.backbone.named_parameters())
    rng = np.random.default_rng(seed)
    labels = {}
    for p in chain.plan.parts:
        # coupled layers (residual stream: downsample + every conv3 / dw + proj + fc2) are clustered jointly
        coupled = [(params[r.param], r.repeat) for r in chain.plan.rows if r.out == p.name]
        feats = row_features(coupled, chain.metric) if init == "center" else np.zeros((p.width(teacher.spec), 1))
        labels[p.name] = cluster_partition(feats, chain.num_clusters(p.name), p.heads, init, rng)
    chain.init_from_teacher(teacher, labels)
    return chain


def save_chain(path: str, chain: WeightChain, config: dict[str, Any] | None = None) -> str:
    """Save a chain checkpoint (kind ``chain``; spec = the teacher's; width / metric / init in ``extra``)."""
    state = {k: v.detach().cpu() for k, v in chain.state_dict().items()}
    extra = {"width": chain.width, "metric": chain.metric, "init": chain.init}
    return save_checkpoint(
        path, kind="chain", state_dict=state, spec=chain.teacher_spec.to_dict(), config=config, extra=extra
    )


def load_chain(path: str) -> WeightChain:
    """Rebuild a chain from its checkpoint (``torch.load(weights_only=True)``)."""
    ckpt = load_checkpoint(path, kind="chain")
    extra = ckpt.get("extra") or {}
    try:
        spec = ModelSpec.from_dict(dict(ckpt["spec"]))
        chain = WeightChain(spec, int(extra["width"]), extra.get("metric", "auto"), extra.get("init", "center"))
        chain.load_state_dict(ckpt["state_dict"])
    except (KeyError, SpecError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"chain checkpoint {path!r} cannot be rebuilt: {e}") from None
    return chain
