"""Inference latency: PyTorch eager and ONNX Runtime, warm-up then the median of timed runs.

Both measure one forward of a ``[batch, 3, H, W]`` input with a fixed thread count, so the two runtimes are
compared like for like (``torch.set_num_threads`` = ORT ``intra_op_num_threads``). ``onnxruntime`` is imported
inside the function that needs it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from oskt.errors import OsktError, SpecError
from oskt.models.factory import build_model
from oskt.models.spec import ModelSpec

__all__ = ["measure_ort_latency", "measure_spec_latency", "measure_torch_latency", "time_median"]


def time_median(fn: Callable[[], Any], warmup: int, runs: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` in milliseconds over ``runs`` calls, after ``warmup`` untimed calls."""
    if runs < 1 or warmup < 0:
        raise SpecError(f"runs={runs}, warmup={warmup}: expected runs >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure_torch_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device = "cpu",
    *,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
) -> float:
    """Median eager-mode latency (ms) of ``model`` in eval mode under ``torch.inference_mode``.

    Args:
        model: the network (moved to ``device``; its mode is restored afterwards).
        input_shape: ``(batch, 3, H, W)``.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...
        threads: intra-op CPU threads during the measurement (``None`` = leave torch's setting).
        warmup: untimed calls first.
        runs: timed calls (the median is returned).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OsktError(f"device {device} was asked for but CUDA is not available")
    was_training = model.training
    model.to(device).eval()
    x = torch.randn(*input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    try:
        with _torch_threads(threads), torch.inference_mode():
            return time_median(lambda: model(x), warmup, runs, sync)
    finally:
        model.train(was_training)


def measure_spec_latency(
    spec: ModelSpec,
    input_size: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    *,
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
) -> float:
    """Latency (ms) of a freshly built model of ``spec`` (weights do not change the cost of a dense forward)."""
    size = tuple(input_size) if input_size is not None else tuple(spec.img_size)
    model = build_model(spec, 1)
    return measure_torch_latency(model, (batch, 3, *size), device, threads=threads, warmup=warmup, runs=runs)


def measure_ort_latency(
    onnx_path: str,
    input_shape: Sequence[int],
    *,
    threads: int = 1,
    warmup: int = 3,
    runs: int = 10,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> float:
    """Median ONNX Runtime latency (ms) of the model at ``onnx_path`` (a local file) on a random input.

    Args:
        onnx_path: the exported model (input ``images``).
        input_shape: ``(batch, 3, H, W)``.
        threads: ``intra_op_num_threads`` (inter-op 1, sequential execution).
        warmup: untimed runs first.
        runs: timed runs (the median is returned).
        providers: ORT execution providers.
    """
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - present in the locked environment
        raise OsktError(f"onnxruntime is needed to time ONNX models: {e}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_path, sess_options=opts, providers=list(providers))
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(tuple(input_shape), dtype=np.float32)
    return time_median(lambda: sess.run(None, {name: x}), warmup, runs)
