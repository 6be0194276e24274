"""Checkpoints: ``{"kind", "state_dict", "spec", "config", "extra", "oskt_version", "git_sha"}``.

Models are never pickled: a checkpoint carries the ``ModelSpec`` (as a dict) and the resolved config, and loading
rebuilds the model from the spec. Every load uses ``torch.load(weights_only=True)``; every save is atomic.
"""

from __future__ import annotations

import functools
import io as _io
import os
import pickle
import re
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


def describe_file(data: bytes) -> str:
    """What a file that is not a readable torch file looks like, in a few words (for error messages)."""
    n = len(data)
    if n == 0:
        return "an empty file (0 bytes)"
    head = data[:512]
    if head.startswith(b"version https://git-lfs"):
        return f"a Git LFS pointer ({n} bytes), not the file it points to (run 'git lfs pull')"
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive of {n} bytes that torch cannot read (truncated, or not written by torch.save)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return f"a plain pickle of {n} bytes (not torch.save's zip format)"
    if head.lstrip()[:1] in (b"<",) and b"html" in head.lower():
        return f"an HTML page ({n} bytes), e.g. a download that returned an error page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a binary file of {n} bytes that is not a torch file"
    if all(c.isprintable() or c in "\n\r\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file of {n} bytes (starting {first!r})"
    return f"a binary file of {n} bytes that is not a torch file"


def _keys_summary(keys: list[str], few: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:few])
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} ({shown}{', ...' if len(keys) > few else ''})"


def _not_oskt(path: str, ckpt: Any) -> str:
    """Why ``ckpt`` (a successfully unpickled object) is not an oskt checkpoint, naming a few of its keys."""
    expected = f"expected an oskt checkpoint (keys {', '.join(REQUIRED)}; written by oskt)"
    if not isinstance(ckpt, dict):
        return f"checkpoint {path!r} holds a {type(ckpt).__name__}, not a dict: {expected}"
    keys = [str(k) for k in ckpt]
    if keys and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return (
            f"checkpoint {path!r} is a plain state dict of {_keys_summary(keys)}: {expected}; weights from "
            "elsewhere go to teacher.pretrained"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    return f"checkpoint {path!r} lacks {missing}: {expected}; it has {_keys_summary(keys)}"


def load_checkpoint(path: str, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Errors (:class:`CheckpointError`) name the file, say what it is (empty, text, a plain state dict with a few of
    its keys, ...) and what was expected, in one short line.
    """
    try:
        data = io.read_bytes(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path!r} is a folder, expected a .pt file written by oskt") from None
    try:
        ckpt = torch.load(_io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # a readable torch file holding objects weights_only refuses
        if data[:4] == b"PK\x03\x04":  # a torch zip file: its pickle is what weights-only loading refused
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the first refused class
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path!r} holds Python objects that weights-only loading refuses{what}, e.g. a pickled "
                "nn.Module: expected an oskt checkpoint of tensors and plain values"
            ) from None
        raise CheckpointError(
            f"checkpoint {path!r} is {describe_file(data)}: expected a torch checkpoint written by oskt"
        ) from None
    except Exception:  # noqa: BLE001 - torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {path!r} is {describe_file(data)}: expected a torch checkpoint written by oskt"
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise CheckpointError(_not_oskt(path, ckpt))
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"checkpoint {path!r} holds a {ckpt['kind']!r}, expected a {kind!r}")
    return ckpt
