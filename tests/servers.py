"""Helpers for tests that start a real server on loopback."""

from __future__ import annotations

import time
import urllib.request

import pytest


def wait_healthy(url: str, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers, or fail the test naming ``what``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{what} did not become healthy within {timeout_s:.0f} s")


def forget_s3_clients() -> None:
    """Drop s3fs's cached file systems: they keep the endpoint and credentials of the environment they were made in,
    so a test that starts its own S3 server (another port) must not reuse those of an earlier one."""
    try:
        import s3fs
    except ImportError:  # the pipeline extra is not installed: no S3 tests either
        return
    s3fs.S3FileSystem.clear_instance_cache()
