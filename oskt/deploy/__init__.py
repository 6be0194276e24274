"""Edge deployment: pick the widest student for a device budget, export it to ONNX, measure its latency.

``onnx`` / ``onnxruntime`` are imported inside the functions that need them, so this package imports with only
the core dependencies.
"""

from oskt.deploy.latency import measure_ort_latency, measure_spec_latency, measure_torch_latency
from oskt.deploy.onnx_export import ExportResult, export_onnx, onnx_features, verify_onnx
from oskt.deploy.pick import (
    Budget,
    Candidate,
    PickResult,
    parse_count,
    pick_spec,
    pick_student,
    pick_to_file,
    rank_candidates,
    width_grid,
)

__all__ = [
    "Budget",
    "Candidate",
    "ExportResult",
    "PickResult",
    "export_onnx",
    "measure_ort_latency",
    "measure_spec_latency",
    "measure_torch_latency",
    "onnx_features",
    "parse_count",
    "pick_spec",
    "pick_student",
    "pick_to_file",
    "rank_candidates",
    "verify_onnx",
    "width_grid",
]
