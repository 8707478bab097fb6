"""Headers of every packet on every trunk, to a pcap per trunk, by tcpdump in the start router's namespace.

Live sniffing in Python drops packets under load, so tcpdump writes the first
96 bytes of each packet (Ethernet + IP + TCP headers with options) and scapy
reads the files after the run (``traffic.flows``).  One tcpdump per trunk on the
start router's trunk interface sees both directions: the primary direction as
it leaves the shaper (after HTB and any drop) and the reverse as it arrives.
tcpdump's own "packets dropped by kernel" line is kept: a capture that dropped
packets undercounts, and the report must say so.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SNAPLEN = 96
BLOCK_TIMEOUT_S = 1.2  # libpcap's TPACKET_V3 block timeout (tcpdump's 1000 ms) and a margin
BUFFER_KIB = 8192  # per-capture kernel ring; tcpdump's default 2 MiB can overflow on a busy 2-core machine


@dataclass
class Capture:
    trunk: str  # trunk id
    intf: str
    pid: int  # router namespace
    path: Path
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None
    captured: int | None = None
    received: int | None = None
    dropped: int | None = None
    cpu_s: float = 0.0
    returncode: int | None = None
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def wait_rusage(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Reaps ``proc`` and returns the CPU seconds it used (os.wait4), or 0.0 if it had to be killed blind."""
    if proc.returncode is not None:
        return 0.0
    try:
        return _wait4(proc, timeout)
    except ChildProcessError:  # reaped elsewhere: its CPU time is lost, its exit status too
        proc.returncode = proc.returncode if proc.returncode is not None else -1
        return 0.0


def _wait4(proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(ru.ru_utime + ru.ru_stime)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(ru.ru_utime + ru.ru_stime)
        time.sleep(0.02)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def ns_popen(pid: int | None, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """A command in the network namespace of ``pid`` (mnexec -a), its own process, never a node's pty."""
    cmd = argv if pid is None else ["mnexec", "-a", str(pid), *argv]
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, **kw)  # type: ignore[call-overload, no-any-return]


class TrunkCaptures:
    """One tcpdump per trunk; ``start`` before the daemons, ``stop`` (SIGINT) after them."""

    def __init__(self, trunk_ports: dict[str, tuple[int, str]], out_dir: Path) -> None:
        self.out_dir = out_dir
        self.captures = {t: Capture(t, intf, pid, out_dir / f"{t}.pcap") for t, (pid, intf) in trunk_ports.items()}

    def start(self, timeout: float = 5.0) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for c in self.captures.values():
            c.stderr_path = self.out_dir / f"{c.trunk}.tcpdump.txt"
            with c.stderr_path.open("wb") as err:
                c.proc = ns_popen(c.pid, ["tcpdump", "-i", c.intf, "-s", str(SNAPLEN), "-B", str(BUFFER_KIB),
                                          "-n", "-Z", "root", "-w", str(c.path)],
                                  stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        # tcpdump says "listening on ..." once its socket is bound: nothing before that would be seen
        deadline = time.monotonic() + timeout
        for c in self.captures.values():
            assert c.stderr_path is not None and c.proc is not None
            while b"listening on" not in c.stderr_path.read_bytes():
                if c.proc.poll() is not None or time.monotonic() > deadline:
                    c.error = c.stderr_path.read_text(errors="replace").strip()[-300:] or "tcpdump did not start"
                    break
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT every tcpdump once the packets already captured have reached it.

        libpcap hands packets over in ring blocks retired when full or after its 1 s timeout, and a
        tcpdump interrupted before then discards the open block without counting it as dropped: the last
        second of a run went missing from the pcaps (cross traffic then looked like ScaleDist payload).
        """
        if any(c.proc is not None and c.proc.returncode is None for c in self.captures.values()):
            time.sleep(BLOCK_TIMEOUT_S)
        for c in self.captures.values():
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, signal.SIGINT)  # not send_signal: it polls, reaping before wait4 can
        for c in self.captures.values():
            if c.proc is None or c.proc.returncode is not None:
                continue
            c.cpu_s = wait_rusage(c.proc, timeout)
            c.returncode = c.proc.returncode
            if c.stderr_path is not None:
                parse_tcpdump_stats(c, c.stderr_path.read_text(errors="replace"))

    def summary(self) -> dict[str, dict[str, object]]:
        return {t: {"pcap": str(c.path.relative_to(self.out_dir.parent)) if c.path.exists() else None,
                    "intf": c.intf, "captured": c.captured, "received_by_filter": c.received,
                    "dropped_by_kernel": c.dropped, "cpu_s": round(c.cpu_s, 4), "error": c.error}
                for t, c in sorted(self.captures.items())}

    @property
    def cpu_s(self) -> float:
        return sum(c.cpu_s for c in self.captures.values())


_STATS = {"captured": re.compile(r"(\d+) packets? captured"),
          "received": re.compile(r"(\d+) packets? received by filter"),
          "dropped": re.compile(r"(\d+) packets? dropped by kernel")}


def parse_tcpdump_stats(c: Capture, text: str) -> None:
    """tcpdump's closing lines: packets captured, received by filter, dropped by kernel."""
    for name, rx in _STATS.items():
        m = rx.search(text)
        if m:
            setattr(c, name, int(m.group(1)))
    if c.dropped is None and not c.error:
        c.error = text.strip()[-300:] or f"tcpdump exited with {c.returncode} and no statistics"


def children_cpu_s() -> float:
    """CPU seconds of every reaped child of this process (for cross-checks in tests)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(ru.ru_utime + ru.ru_stime)
