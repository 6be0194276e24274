"""DepGraph structural pruning of a teacher to a student's exact widths (Torch-Pruning; BASELINES.md §1.4).

One-shot local pruning with ``GroupMagnitudeImportance(p=2)`` (squared group L2 magnitude):

* ResNet: a per-layer ``pruning_ratio_dict`` (stem conv, every block's conv1 / conv2 / conv3 and the projection
  conv) hitting the student's widths exactly; the BNNeck and the classifier's input follow the last stage through
  the dependency graph; the classifier's outputs (identities) are protected.
* ViT: ``pruning_ratio = 1 - S/T`` on the residual stream, qkv / fc1 with ``num_heads`` and
  ``prune_head_dims=True, prune_num_heads=False`` (head count kept). The teacher-width stem (patch embedding,
  tokens, positions = the ``dw`` input) is not pruned; for a ``plain``-stem student the pruned ``dw`` (S × D) is
  folded into the stem afterwards (exact, as in expansion).

No ``round_to`` (it would break widths such as 20 or 22 per head). The result is loaded into
``build_model(spec, num_classes)`` with zero mismatches (else SpecError).
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import Tensor, nn

from oskt.errors import SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.spec import check_fits_teacher
from oskt.models.vit import has_dw


def _ratio(teacher_width: int, student_width: int) -> float:
    return (teacher_width - student_width) / teacher_width


def _resnet_ratios(model: ReIDModel, spec) -> dict[nn.Module, float]:
    t = model.spec
    bb = model.backbone
    ratios: dict[nn.Module, float] = {bb.conv1: _ratio(t.in_planes, spec.in_planes)}
    for s, (a, b) in enumerate(zip(t.planes, spec.planes, strict=True), start=1):
        r = _ratio(a, b)
        for blk in getattr(bb, f"layer{s}"):
            ratios.update({blk.conv1: r, blk.conv2: r, blk.conv3: r})
            if blk.downsample is not None:
                ratios[blk.downsample[0]] = r
    return ratios


def _trace_forward(model: ReIDModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """Traced forward reaching every head layer (BNNeck(s) and classifier) whatever the train / eval mode.
    Outputs stay separate: summing them would couple the classifier's outputs with the feature channels."""
    z = model.backbone(x)
    return model.head.classifier(model.head.post_bn(z)), model.head.pre_bn(z)


def _trace_tokens(model: ReIDModel, x: Tensor) -> tuple[Tensor, ...]:
    """ViT trace without the classifier: its input concat(cls, mean(parts)) reaches the same stream channels
    through two paths, which torch-pruning's index mapping cannot follow; the classifier is sliced by hand."""
    z = model.backbone(x)
    return tuple(bn(z[:, i]) for i, bn in enumerate(model.head.bnneck))


def _prune_vit(model: ReIDModel, spec, x: Tensor, kwargs: dict) -> None:
    bb, t = model.backbone, model.spec
    kwargs = {**kwargs, "forward_fn": _trace_tokens, "ignored_layers": [model.head.classifier, bb.patch_embed.proj]}
    pruner = tp.pruner.BasePruner(
        model,
        x,
        pruning_ratio=_ratio(t.dim, spec.dim),
        num_heads={blk.attn.qkv: t.num_heads for blk in bb.blocks},
        prune_head_dims=True,
        prune_num_heads=False,
        unwrapped_parameters=[(p, p.dim() - 1) for p in (bb.cls_token, bb.part_tokens, bb.token_pos, bb.pos_embed)],
        **kwargs,
    )
    removed: list[int] = []
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if dep.target.module is bb.dw and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed = [int(i) for i in idxs]
        group.prune()
    removed_set = set(removed)
    keep = torch.tensor([i for i in range(t.dim) if i not in removed_set], dtype=torch.long)
    if keep.numel() != spec.dim:
        raise SpecError(f"DepGraph kept {keep.numel()} stream channels of {t.dim}, expected {spec.dim}")
    cls = model.head.classifier
    with torch.no_grad():  # classifier input = concat(BN(cls), mean BN(parts)): both halves follow the stream
        w = cls.weight[:, torch.cat([keep, keep + t.dim]).to(cls.weight.device)].clone()
    model.head.classifier = nn.Linear(w.shape[1], w.shape[0], bias=False).to(w.device)
    model.head.classifier.weight.data.copy_(w)


def _fold_plain_stem(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold ``backbone.dw`` into the patch embedding / tokens / positions (dw is linear, after the position add)."""
    dw = state.pop("backbone.dw.weight")
    w = state["backbone.patch_embed.proj.weight"]
    state["backbone.patch_embed.proj.weight"] = (dw @ w.reshape(w.shape[0], -1)).reshape(dw.shape[0], *w.shape[1:])
    state["backbone.patch_embed.proj.bias"] = dw @ state["backbone.patch_embed.proj.bias"]
    for name in ("cls_token", "part_tokens", "token_pos", "pos_embed"):
        state[f"backbone.{name}"] = state[f"backbone.{name}"] @ dw.t()
    return state


def prune_to_spec(teacher: ReIDModel, spec, example_input: Tensor | None = None, importance_p: int = 2) -> ReIDModel:
    """Prune a copy of ``teacher`` to ``spec``'s widths and return it as a ``build_model(spec, …)`` model.

    Args:
        teacher: the (trained) teacher; it is not modified.
        spec: the student ``ModelSpec`` (same arch, within the teacher's widths).
        example_input: a traced input (default: ``randn(2, 3, *teacher.spec.img_size)``).
        importance_p: the ``p`` of ``GroupMagnitudeImportance``.

    Raises:
        SpecError: the student is not within the teacher, or the pruned shapes do not match the student.
    """
    t = teacher.spec
    check_fits_teacher(spec, t, "depgraph prune")
    model = copy.deepcopy(teacher)
    device = next(model.parameters()).device
    x = example_input if example_input is not None else torch.randn(2, 3, *t.img_size, device=device)
    kwargs: dict = {
        "importance": tp.importance.GroupMagnitudeImportance(p=importance_p),
        "ignored_layers": [model.head.classifier],
        "forward_fn": _trace_forward,
    }
    if spec.family == "resnet":
        pruner = tp.pruner.BasePruner(
            model, x, pruning_ratio=0.0, pruning_ratio_dict=_resnet_ratios(model, spec), **kwargs
        )
        pruner.step()
    else:
        _prune_vit(model, spec, x, kwargs)
    state = model.state_dict()
    if spec.family == "vit" and not has_dw(spec):
        state = _fold_plain_stem(state)
    num_classes = teacher.num_classes
    with torch.device("meta"):
        student = build_model(spec, num_classes)
    try:
        student.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise SpecError(f"DepGraph pruning of {t.name} did not produce {spec.name}'s shapes: {e}") from None
    student.neck_feat = teacher.neck_feat
    student.train(teacher.training)
    return student
