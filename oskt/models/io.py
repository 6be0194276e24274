"""Model checkpoints: ``{spec, state_dict, resolved config, version}`` via ``oskt.checkpoint``; loading rebuilds."""

from __future__ import annotations

from typing import Any

import torch

from oskt.checkpoint import load_checkpoint, save_checkpoint
from oskt.errors import CheckpointError, SpecError
from oskt.models.factory import ReIDModel, build_model
from oskt.models.spec import ModelSpec


def save_model(
    path: str, model: ReIDModel, kind: str, config: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> str:
    """Save ``model`` (spec + state dict, no pickled module); ``extra`` gains ``num_classes`` and ``neck_feat``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    info = {"num_classes": model.num_classes, "neck_feat": model.neck_feat, **(extra or {})}
    return save_checkpoint(path, kind=kind, state_dict=state, spec=model.spec.to_dict(), config=config, extra=info)


def load_model(path: str, kind: str | None = None) -> tuple[ReIDModel, dict[str, Any]]:
    """Rebuild a model from a checkpoint's spec and load its weights (strict). Returns ``(model, checkpoint)``."""
    ckpt = load_checkpoint(path, kind=kind)
    try:
        spec = ModelSpec.from_dict(dict(ckpt["spec"]))
    except (SpecError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path!r} carries an invalid model spec: {e}") from None
    state = ckpt["state_dict"]
    cls_w = state.get("head.classifier.weight")
    if not isinstance(cls_w, torch.Tensor):
        raise CheckpointError(f"checkpoint {path!r} has no 'head.classifier.weight': not a model checkpoint")
    model = build_model(spec, int(cls_w.shape[0]))
    model.neck_feat = ckpt.get("extra", {}).get("neck_feat", model.neck_feat)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path!r} does not match its spec {spec.name}: {e}") from None
    return model, ckpt
