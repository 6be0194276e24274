"""A local Ray started the way the pipeline starts it listens on loopback only (issue #17), and its environment is
dropped again before a cluster connection (flows/engines.py, ``LOCAL_RAY_ENV``)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.flows.conftest import stack_env

pytestmark = pytest.mark.pipeline
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = "SOCKETS "

# Runs in a fresh interpreter so that the session Ray of conftest.py is not in the way. `ray` is imported before
# ray_init_kwargs is called, as in flows.engines.ray_engine / prefect_engine (prefect_ray imports ray): Ray has then
# already read its environment, the harder case. The child only reports; the test asserts.
CHILD = r"""
import json, os, socket, sys
import psutil
import ray
from flows.engines import ray_init_kwargs
from oskt.config import load_config

ray.init(**ray_init_kwargs(load_config(profile="smoke").compute, None))
try:
    @ray.remote
    def worker_pid(x):
        return os.getpid(), x + 1

    task_pid, answer = ray.get(worker_pid.remote(41))
    driver = psutil.Process()
    procs = [driver, *driver.children(recursive=True)]  # GCS, raylet, agents, workers: all started from here
    sockets = []
    for p in procs:
        try:
            name, conns = p.name(), p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            tcp_listen = c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN
            udp_bound = c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr
            if tcp_listen or udp_bound:
                sockets.append({"pid": p.pid, "name": name, "ip": c.laddr.ip, "port": c.laddr.port,
                                "type": "tcp" if c.type == socket.SOCK_STREAM else "udp"})
    report = {"answer": answer, "task_pid": task_pid, "pids": [p.pid for p in procs], "sockets": sockets,
              "node_ip": ray.util.get_node_ip_address()}
finally:
    ray.shutdown()
print("SOCKETS " + json.dumps(report))
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, how a dual-stack gRPC server reports a 127.0.0.1 bind
    return addr.is_loopback


def test_loopback_helper() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("::ffff:127.0.0.1")
    assert not any(_loopback(ip) for ip in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads other processes' sockets (Linux)")
def test_local_ray_listens_on_loopback_only(tmp_path) -> None:  # noqa: ANN001
    # Ray's own temporary folder (short: it holds Unix sockets) keeps ray.init from joining a `ray start` cluster of
    # this machine, which an address-less ray.init does when /tmp/ray/ray_current_cluster names one.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, **stack_env(str(tmp_path)), "PYTHONPATH": ROOT, "RAY_TMPDIR": ray_tmp}
    for k in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)  # the pipeline's defaults, not the caller's
    try:
        cmd = [sys.executable, "-c", CHILD]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)][-1]
    report = json.loads(line[len(MARK) :])

    assert report["answer"] == 42  # the engine works: a task ran
    assert report["task_pid"] in report["pids"]  # ... in a worker of this instance, whose sockets were read
    assert _loopback(report["node_ip"])
    names = {s["name"] for s in report["sockets"]}
    assert {"gcs_server", "raylet"} <= names, names  # the check saw Ray's servers, it is not vacuous
    exposed = [s for s in report["sockets"] if not _loopback(s["ip"])]
    assert exposed == [], exposed


@pytest.fixture
def ray_constants(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Ray's constants module, imported; its cluster switch and this module's record are restored afterwards."""
    pytest.importorskip("ray")
    import ray._private.ray_constants as constants

    from flows import engines

    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", constants.ENABLE_RAY_CLUSTER)
    monkeypatch.setattr(engines, "_replaced_env", {})
    for k in engines.LOCAL_RAY_ENV:
        monkeypatch.delenv(k, raising=False)
    return constants


def test_local_env_switches_an_imported_ray_and_a_cluster_drops_it(ray_constants, monkeypatch) -> None:  # noqa: ANN001
    from flows.engines import LOCAL_RAY_ENV, SINGLE_MACHINE_VAR, ray_init_kwargs
    from oskt.config import load_config

    compute = load_config(profile="smoke").compute
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the user's choice: kept for a local Ray
    monkeypatch.setenv(SINGLE_MACHINE_VAR, "1")  # multi-machine mode: pinned off for a local Ray
    kwargs = ray_init_kwargs(compute, None)
    assert kwargs["_node_ip_address"] == "127.0.0.1" and kwargs["include_dashboard"] is False
    assert os.environ[SINGLE_MACHINE_VAR] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == LOCAL_RAY_ENV["RAY_USAGE_STATS_ENABLED"]
    ray_init_kwargs(compute, None)  # twice: still remembers the user's value, not its own

    assert ray_init_kwargs(compute, "10.0.0.5:6379") == {}
    assert os.environ[SINGLE_MACHINE_VAR] == "1" and ray_constants.ENABLE_RAY_CLUSTER is True
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ  # was unset before the local Ray


def test_cluster_drop_restores_ray_default_mode(ray_constants) -> None:  # noqa: ANN001
    from flows.engines import SINGLE_MACHINE_VAR, ray_init_kwargs
    from oskt.config import load_config

    compute = load_config(profile="smoke").compute
    ray_init_kwargs(compute, None)
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and ray_constants.ENABLE_RAY_CLUSTER is False
    ray_init_kwargs(compute, "ray://10.0.0.5:10001")
    assert SINGLE_MACHINE_VAR not in os.environ and "RAY_AUTH_MODE" not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER is (not ray_constants.IS_WINDOWS_OR_OSX)
