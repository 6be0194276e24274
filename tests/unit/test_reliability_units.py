"""Issue #17, the library side: preflight probes bounded as a whole (DNS included), checkpoint messages that say what
a file is, the ONNX check's tolerance scaled to the features, device spellings checked when the config loads."""

from __future__ import annotations

import io as _io
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from oskt.checkpoint import describe_file, load_checkpoint
from oskt.config import ComputeConfig, load_config
from oskt.errors import CheckpointError, ConfigError, OsktError, SpecError
from oskt.pipeline import preflight as pf

# ------------------------------------------------------------------------------------------------ preflight


def test_tracking_probe_is_bounded_when_dns_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """socket timeouts do not cover name resolution: the whole probe is bounded."""
    release = threading.Event()

    def hanging_getaddrinfo(*args: object, **kwargs: object) -> list:
        release.wait(30)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    t0 = time.monotonic()
    try:
        with pytest.raises(pf.PreflightError, match=r"mlflow\.example:5000 did not answer within 0\.5 s: start it"):
            pf.check_tracking("http://mlflow.example:5000", timeout=0.5)
        assert time.monotonic() - t0 < 5  # would be 30 s without the bound
    finally:
        release.set()


def test_tracking_probe_is_bounded_when_the_server_never_answers() -> None:
    """A server that accepts the connection and then says nothing (a hung process, a firewall in the middle)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # connections complete in the kernel's backlog; nobody ever reads or writes
    try:
        port = srv.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(pf.PreflightError, match=f"127.0.0.1:{port}"):
            pf.check_tracking(f"http://127.0.0.1:{port}", timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        srv.close()


def test_tracking_probe_reports_refusal_and_http_status() -> None:
    with pytest.raises(pf.PreflightError, match=r"unreachable \(\[Errno 111\] Connection refused\)"):
        pf.check_tracking("http://127.0.0.1:9", timeout=2)
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(pf.PreflightError, match="answered /health with HTTP 503"):
            pf.check_tracking(f"http://127.0.0.1:{server.server_port}", timeout=2)
    finally:
        server.shutdown()


def test_check_locations_skips_local_paths_and_names_the_s3_one(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(pf, "check_s3", lambda url, timeout=pf.TIMEOUT_S: seen.append(url))
    pf.check_locations(["outputs", None, "s3://b/x", "/abs/file.pt", "s3://b/x", "s3://c/y"])
    assert seen == ["s3://b/x", "s3://c/y"]


def test_data_locations_are_only_what_training_reads() -> None:
    cfg = load_config(profile="smoke", overrides=["data.root=s3://bucket/data", "compute.out_dir=s3://other/out"])
    assert pf.data_locations(cfg) == ["s3://bucket/data"]
    assert set(pf.s3_locations(cfg)) == {"s3://bucket/data", "s3://other/out"}


def test_missing_credentials_are_found_without_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(pf.PreflightError, match="S3 credentials are missing for s3://b/x: set AWS_ACCESS_KEY_ID"):
        pf.check_s3("s3://b/x", timeout=3)


# ------------------------------------------------------------------------------------------------ checkpoints


def _zip_bytes() -> bytes:
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "an empty file (0 bytes)"),
        (b"101", "a text file of 3 bytes (starting '101')"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "a Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "an HTML page"),
        (b"\x00\xff\x13\x37" * 8, "a binary file of 32 bytes that is not a torch file"),
        (_zip_bytes(), "a zip archive of"),
    ],
)
def test_describe_file(data: bytes, needle: str) -> None:
    assert describe_file(data).startswith(needle)


def test_truncated_checkpoint_and_refused_objects(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"kind": "student", "state_dict": {}, "spec": {}, "oskt_version": "0"}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pt' is a zip archive of 200 bytes that torch cannot read"):
        load_checkpoint(str(cut))
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled nn.Module: weights-only loading refuses it
    with pytest.raises(CheckpointError, match="holds Python objects that weights-only loading refuses") as e:
        load_checkpoint(str(module))
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_checkpoint_with_missing_keys_lists_few(tmp_path: Path) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3, **{f"k{i}": i for i in range(50)}}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    msg = str(e.value)
    assert "lacks ['kind', 'spec', 'oskt_version']" in msg and "52 keys ('state_dict', 'epoch', 'k0', 'k1', ...)" in msg
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="holds a list, not a dict: expected an oskt checkpoint"):
        load_checkpoint(str(listed))
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(str(tmp_path))


# ------------------------------------------------------------------------------------------------ ONNX check


def _resnet(scale: float) -> torch.nn.Module:
    from oskt.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(in_planes=8, multipliers=(2, 4, 8), img_size=(64, 32)), 4).eval()
    with torch.no_grad():  # a trained BNNeck scales the features far above a fresh one's: the absolute error grows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.mul_(scale)
    return model


def test_default_tolerance_fits_large_features_and_still_catches_a_wrong_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from oskt.deploy import onnx_export

    model = _resnet(scale=100.0)
    res = onnx_export.export_onnx(model, str(tmp_path / "big.onnx"), batch_sizes=(2,))
    assert res.max_abs_diff is not None and res.max_rel_diff is not None and res.tolerance is not None
    assert res.max_rel_diff < 1e-4 * 0.2 and res.max_abs_diff <= res.tolerance  # well inside the bound
    real = onnx_export.onnx_features

    def off_by_a_thousandth(path: str, images: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        out = real(path, images, threads)
        return out + 1e-3 * out.abs().max()  # 10x the relative bound: a wrong export, not rounding

    monkeypatch.setattr(onnx_export, "onnx_features", off_by_a_thousandth)
    with pytest.raises(OsktError, match=r"differ from PyTorch by .* relative 0\.001.*not faithful"):
        onnx_export.export_onnx(model, str(tmp_path / "wrong.onnx"), batch_sizes=(2,))
    assert not (tmp_path / "wrong.onnx").exists()


@pytest.mark.parametrize("size", [(0, 0), (64, -1)])
def test_export_refuses_a_bad_input_size(tmp_path: Path, size: tuple[int, int]) -> None:
    from oskt.deploy.onnx_export import export_onnx

    with pytest.raises(SpecError, match="expected two positive integers H W"):
        export_onnx(_resnet(1.0), str(tmp_path / "x.onnx"), input_size=size)
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_spellings_allowed(device: str) -> None:
    assert ComputeConfig(device=device).device == device


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:１", "", "cpu "])
def test_device_spellings(device: str) -> None:
    with pytest.raises(ConfigError, match=r"compute\.device=.* is not allowed: expected 'auto', 'cpu', 'cuda'"):
        ComputeConfig(device=device)


def test_device_is_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"compute\.device='tpu' is not allowed"):
        load_config(profile="smoke", overrides=["compute.device=tpu"])


def test_unavailable_devices_are_config_errors() -> None:
    from oskt.runtime import select_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            select_device("cuda:0")
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            select_device(f"cuda:{torch.cuda.device_count()}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="MPS is not available"):
            select_device("mps")
