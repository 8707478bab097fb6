"""Bad input against running daemons: each gets a clear error, is logged, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scaledist import netio
from scaledist.local import LocalCluster
from scaledist.messages import (
    Ack,
    BlockGet,
    BlockHeader,
    CopyInstruction,
    CopyRequest,
    Denial,
    SlaveReport,
    StatusQuery,
    StatusReply,
)
from scaledist.wire import Codec, ProtocolError

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "topologies" / "small.yaml"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The servers of small.yaml, no generator: nothing moves unless a test makes it."""
    lc = LocalCluster(SMALL, run_dir=tmp_path_factory.mktemp("input") / "run", log=lambda s: None)
    try:
        lc.start_servers()
        yield lc
    finally:
        lc.close()


def raw_exchange(host: str, port: int, payload: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def call(lc: LocalCluster, ident: str, msg: object, key: bytes | None = None, data: bool = False) -> object:
    codec = Codec(key or lc.cluster.key, "test")
    ep = lc.cluster.endpoint(ident)
    return asyncio.run(netio.call(ep.host, ep.data if data else ep.control, codec, msg, timeout=5.0))


def status(lc: LocalCluster, ident: str) -> dict[str, object]:
    reply = call(lc, ident, StatusQuery())
    assert isinstance(reply, StatusReply)
    return reply.body


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    """The server replies first and logs after, so its log line may trail the reply a little."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def log_of(lc: LocalCluster, ident: str) -> str:
    return (lc.run_dir / "logs" / f"{ident}.log").read_text()


@pytest.mark.parametrize("ident", ["rm", "M1", "dc1-r1-s2"])
def test_garbage_is_answered_with_an_error_and_logged(cluster: LocalCluster, ident: str) -> None:
    ep = cluster.cluster.endpoint(ident)
    reply = raw_exchange(ep.host, ep.control, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"bad magic" in reply
    assert wait_for(lambda: "bad magic" in log_of(cluster, ident))
    assert status(cluster, ident)  # still serving


@pytest.mark.parametrize("ident", ["rm", "M1", "dc1-r1-s2"])
def test_unauthenticated_message_changes_nothing(cluster: LocalCluster, ident: str) -> None:
    before = status(cluster, ident)
    rejected_before = log_of(cluster, ident).count("bad HMAC")
    msg: object
    if ident == "rm":
        msg = CopyRequest(transfer_id="evil.1", master="M1", destination="dc2-r3-s1", sources=("dc1-r1-s1",),
                          fileset="news", file_id="x", version=1, block=0, size=1000)
    elif ident == "M1":
        msg = SlaveReport(slave="dc2-r3-s1", fileset="news", files=())
    else:
        msg = CopyInstruction(transfer_id="evil.2", mode="pull", master="M1", source="dc1-r1-s1",
                              destination=ident, fileset="news", file_id="x", version=1, block=0, rate=1e6,
                              window=65536, deadline=0.0)
    # The server's authenticated Error reply cannot be read without the key either.
    with pytest.raises(ProtocolError, match="HMAC"):
        call(cluster, ident, msg, key=b"not the cluster key at all")
    assert wait_for(lambda: log_of(cluster, ident).count("bad HMAC") == rejected_before + 1)
    after = status(cluster, ident)
    if ident == "rm":
        assert after["active_transfers"] == before["active_transfers"] == 0
        assert after["granted"] == before["granted"]
    elif ident == "M1":
        assert after["reports"] == before["reports"]
    else:
        assert after == before


def test_oversized_frame_is_refused_before_it_is_read(cluster: LocalCluster) -> None:
    ep = cluster.cluster.endpoint("M1")
    header = b"SD\x01\x00" + (50_000_000).to_bytes(4, "big") + b"\x00" * 32
    reply = raw_exchange(ep.host, ep.control, header)
    assert b"exceeds" in reply


def test_path_escaping_file_ids_are_refused(cluster: LocalCluster) -> None:
    slave = "dc1-r1-s2"
    reply = call(cluster, slave, CopyInstruction(
        transfer_id="esc.1", mode="pull", master="M1", source="dc1-r1-s1", destination=slave, fileset="news",
        file_id="../../etc/passwd", version=1, block=0, rate=1e6, window=65536, deadline=0.0))
    assert isinstance(reply, Ack) and not reply.ok and "not allowed" in reply.detail
    hdr = call(cluster, slave, BlockGet(transfer_id="esc.2", fileset="news", file_id="../../../etc/shadow",
                                        version=1, block=0, rate=1e6, window=65536), data=True)
    assert isinstance(hdr, BlockHeader) and not hdr.ok and "not allowed" in hdr.reason
    assert not any(p.name.startswith("..") for p in (cluster.run_dir / "data").rglob("*"))


def test_resource_manager_denies_nonsense_and_keeps_no_reservation(cluster: LocalCluster) -> None:
    before = status(cluster, "rm")
    for req in (
        CopyRequest(transfer_id="bad.1", master="M1", destination="nobody", sources=("dc1-r1-s1",),
                    fileset="news", file_id="x", version=1, block=0, size=1000),
        CopyRequest(transfer_id="bad.2", master="M1", destination="dc2-r3-s1", sources=("dc1-r1-s1",),
                    fileset="nosuch", file_id="x", version=1, block=0, size=1000),
        CopyRequest(transfer_id="bad.3", master="M1", destination="dc2-r3-s1", sources=("dc1-r1-s1",),
                    fileset="news", file_id="x", version=1, block=0, size=10**12),
    ):
        reply = call(cluster, "rm", req)
        assert isinstance(reply, Denial) and reply.reason
    after = status(cluster, "rm")
    assert after["active_transfers"] == before["active_transfers"]
    assert after["granted"] == before["granted"]


def test_master_ignores_reports_for_what_it_does_not_own(cluster: LocalCluster) -> None:
    reply = call(cluster, "M1", SlaveReport(slave="intruder", fileset="news", files=()))
    assert isinstance(reply, Ack)
    body = status(cluster, "M1")
    assert "intruder" not in json.dumps(body["state"])


def test_status_command_prints_links_and_progress(cluster: LocalCluster) -> None:
    r = subprocess.run([sys.executable, "-m", "scaledist", "status", "--cluster", str(cluster.cluster_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "resource manager rm" in r.stdout
    assert "fileset news" in r.stdout and "fileset web" in r.stdout
