"""Checkpoints: ``{"kind", "state_dict", "spec", "config", "extra", "oskt_version", "git_sha"}``.

Models are never pickled: a checkpoint carries the ``ModelSpec`` (as a dict) and the resolved config, and loading
rebuilds the model from the spec. Every load uses ``torch.load(weights_only=True)``; every save is atomic.
"""

from __future__ import annotations

import functools
import io as _io
import os
import subprocess
from typing import Any

import torch

from oskt import __version__, io
from oskt.errors import CheckpointError

REQUIRED = ("kind", "state_dict", "spec", "oskt_version")


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the working tree this code runs from ('' outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def save_checkpoint(
    path: str,
    *,
    kind: str,
    state_dict: dict[str, Any],
    spec: dict[str, Any],
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Save a checkpoint atomically (local path or URL). ``extra`` holds e.g. chain labels, epoch, metrics,
    optimizer / scheduler / RNG states for resuming. Returns ``path``."""
    payload = {
        "kind": kind,
        "state_dict": state_dict,
        "spec": spec,
        "config": config or {},
        "extra": extra or {},
        "oskt_version": __version__,
        "git_sha": git_sha(),
    }
    io.torch_save_atomic(payload, path)
    return path


def load_checkpoint(path: str, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors name the file and what is wrong."""
    try:
        data = io.read_bytes(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    try:
        ckpt = torch.load(_io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"checkpoint {path!r} cannot be read as a weights-only torch file: {e}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"checkpoint {path!r} is not an oskt checkpoint: expected keys {list(REQUIRED)}, found {have}"
        )
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"checkpoint {path!r} holds a {ckpt['kind']!r}, expected a {kind!r}")
    return ckpt
