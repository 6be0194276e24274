"""``oskt export``: a student checkpoint to ONNX, verified against PyTorch with ONNX Runtime."""

from __future__ import annotations

import argparse


def _export(args: argparse.Namespace) -> int:
    from oskt.deploy.onnx_export import export_onnx
    from oskt.errors import SpecError
    from oskt.models.io import load_model
    from oskt.pipeline.preflight import check_locations

    if args.input_size is not None and min(args.input_size) < 1:  # before loading anything
        h, w = args.input_size
        raise SpecError(f"--input-size {h} {w}: expected two positive integers H W (default: the model's img_size)")
    tolerances = {k: v for k in ("atol", "rtol") if (v := getattr(args, k)) is not None}
    for k, v in tolerances.items():
        if not v >= 0:
            raise SpecError(f"--{k} {v:g}: a tolerance must be >= 0")
    check_locations([args.checkpoint, args.output])  # s3:// credentials / bucket: one line, not a botocore trace
    model, _ = load_model(args.checkpoint)
    res = export_onnx(
        model,
        args.output,
        args.input_size,
        args.opset,
        verify=not args.no_verify,
        **tolerances,
    )
    check = (
        f"max |ORT - torch| = {res.max_abs_diff:.2e} (relative {res.max_rel_diff:.1e}, allowed {res.tolerance:.1e})"
        if res.max_abs_diff is not None
        else "not verified"
    )
    print(
        f"exported {model.spec.name} to {res.path}: input images[batch, 3, {res.input_size[0]}, "
        f"{res.input_size[1]}] -> features[batch, {res.feat_dim}], {res.exporter} exporter, opset {res.opset}, "
        f"{res.num_bytes / 1e6:.2f} MB, {check}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a student checkpoint (ResNet or ViT) to ONNX",
        description="Export the eval-mode retrieval feature (dynamic batch axis) and check the file with ONNX "
        "Runtime against PyTorch on random inputs (batch 1 and 3).",
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="output format (onnx)")
    p.add_argument("--checkpoint", required=True, metavar="STUDENT.pt", help="model checkpoint (local or s3://)")
    p.add_argument("-o", "--output", required=True, metavar="model.onnx", help="file to write (atomically)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="example input size (default: the model's img_size; a ViT only takes its own)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--atol", type=float, default=None, help="absolute part of the allowed |ORT - torch| (default 1e-5)")
    p.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="part of the allowed |ORT - torch| relative to the largest |feature| (default 1e-4; fp32 exports "
        "of the whole series differ by <= 2.4e-6 of it)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    p.set_defaults(func=_export)
