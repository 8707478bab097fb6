"""Remove what a killed testbed run left behind, and nothing else.

Everything an ``EmulatedNetwork`` creates is recognisable:

* node and interface names follow ``sd<tag><kind><n>[e<port>]`` (``NAME_RE``),
  where ``<tag>`` is two characters chosen per run and ``<kind>`` is h (host),
  r (border router), b (rack bridge), d (datacenter bridge) or m (management bridge);
* Mininet's shells carry ``mininet:<node name>`` on their command line;
* every process in one of our namespaces (daemons, delay-line workers) is found
  through the interfaces its namespace holds (``/proc/<pid>/net/dev``), whatever
  its command line says;
* each run writes ``/run/scaledist-testbed/<tag>.json`` with its pid (and that
  process's start time, against pid reuse), the sysctls it changed and the
  hardware-in-the-loop interfaces it borrowed.

A run whose owner process is alive is left alone, so ``clean`` is safe next to
a running experiment and safe to run when nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path

__all__ = ["NAME_RE", "REGISTRY", "clean", "find_processes", "live_tags", "node_name", "proc_start_time",
           "shell_node", "sweep_tag"]

REGISTRY = Path("/run/scaledist-testbed")
NAME_RE = re.compile(r"^sd([a-z0-9]{2})([hrbdm])([0-9]+)(?:e([0-9]+))?$")
# the exact command line of a Mininet node's shell (mnexec ... env PS1=... bash ... -is mininet:<name>)
SHELL_RE = re.compile(r"^bash --norc --noediting -is mininet:(sd[a-z0-9]{2}[hrbdm][0-9]+)$")
IPTABLES_COMMENTS = ("scaledist-route", "scaledist-delay", "scaledist-corrupt", "scaledist-drill",
                     "scaledist-baseline-route")
NETNS_DIR = Path("/run/netns")


def node_name(tag: str, kind: str, n: int) -> str:
    """The Mininet node name of the n-th node of one kind in run ``tag`` (see ``NAME_RE``)."""
    return f"sd{tag}{kind}{n}"


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _entry_alive(entry: dict[str, object]) -> bool:
    pid = entry.get("pid")
    if not isinstance(pid, int):
        return False
    return proc_start_time(pid) == entry.get("start_time")


def _read_registry() -> dict[str, tuple[Path, dict[str, object]]]:
    out: dict[str, tuple[Path, dict[str, object]]] = {}
    if not REGISTRY.is_dir():
        return out
    for f in sorted(REGISTRY.glob("*.json")):
        try:
            entry = json.loads(f.read_text())
        except (OSError, ValueError):
            entry = {}
        out[str(entry.get("tag") or f.stem)] = (f, entry)
    return out


def live_tags() -> set[str]:
    """Tags of runs whose owning process is still alive."""
    return {tag for tag, (_, entry) in _read_registry().items() if _entry_alive(entry)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def shell_node(pid: int) -> str | None:
    """The Mininet node name if ``pid`` is the shell of one of our nodes, else None."""
    m = SHELL_RE.match(_cmdline(pid))
    return m.group(1) if m else None


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _ns_interfaces(pid: int) -> list[str]:
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return [ln.split(":", 1)[0].strip() for ln in lines]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ours(name: str, tags: Callable[[str], bool]) -> bool:
    m = NAME_RE.match(name)
    return bool(m and tags(m.group(1)))


def _kill_processes(tags: Callable[[str], bool]) -> list[str]:
    """Kill what ``find_processes`` finds and wait until it is gone."""
    done: list[str] = []
    victims = find_processes(tags)
    for pid, why in sorted(victims.items()):
        cmd = _cmdline(pid)[:100]
        try:
            os.kill(pid, signal.SIGKILL)
            done.append(f"killed process {pid} ({why}): {cmd}")
        except (ProcessLookupError, PermissionError):
            pass
    # wait for them to die so their namespaces (and the veths in them) go away
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(_state(p) not in ("X", "Z") for p in victims):
        time.sleep(0.02)
    return done


def find_processes(tags: Callable[[str], bool]) -> dict[int, str]:
    """Mininet shells of our nodes and every process living in one of our namespaces (pid -> why).

    A namespace is ours when a shell of ours lives in it (even after its interfaces are gone) or when it
    holds an interface named like ours (a daemon or delay-line worker that outlived its shell).  The
    caller's own namespace and init's are never ours: there only our shells themselves are killed.
    If the caller's namespace cannot be read, nothing is killed by namespace at all.
    """
    me = os.getpid()
    own_ns = _netns_inode("self")
    protected = {ino for ino in (own_ns, _netns_inode(1)) if ino is not None}
    by_ns: dict[int, list[int]] = {}
    for pid in _pids():
        ino = _netns_inode(pid)
        if ino is not None:
            by_ns.setdefault(ino, []).append(pid)
    victims: dict[int, str] = {}
    our_ns: dict[int, str] = {}
    for ino, pids in by_ns.items():
        namespaced = own_ns is not None and ino not in protected
        for pid in pids:
            m = SHELL_RE.match(_cmdline(pid))
            if m and _ours(m.group(1), tags):
                victims[pid] = f"Mininet shell of {m.group(1)}"
                if namespaced:
                    our_ns[ino] = m.group(1)
        if namespaced and ino not in our_ns:
            ours = [n for n in _ns_interfaces(pids[0]) if _ours(n, tags)]
            if ours and not [n for n in _ns_interfaces(pids[0]) if n not in ("lo", *ours)
                             and not NAME_RE.match(n)]:
                our_ns[ino] = ours[0]
    for ino, what in our_ns.items():
        for pid in by_ns[ino]:
            victims.setdefault(pid, f"in the namespace of {what}")
    victims.pop(me, None)
    return victims


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _root_links() -> list[tuple[str, str | None]]:
    """(name, kind) of every interface in the root namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        out = []
        for link in ipr.get_links():
            info = link.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else None
            out.append((str(link.get("IFLA_IFNAME")), kind))
        return out


def _delete_links(tags: Callable[[str], bool]) -> list[str]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    done: list[str] = []
    # bridges first (ports fall off), then veths; a deleted veth takes its peer along
    links = sorted(_root_links(), key=lambda nk: (nk[1] != "bridge", nk[0]))
    with IPRoute() as ipr:
        for name, kind in links:
            if not _ours(name, tags):
                continue
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                continue  # went with its peer
            try:
                ipr.link("del", index=idx[0])
                done.append(f"deleted {kind or 'interface'} {name}")
            except NetlinkError as e:
                if e.code != 19:  # ENODEV: gone meanwhile
                    done.append(f"could not delete {name}: {e}")
    return done


def _release_hil(entry: dict[str, object]) -> list[str]:
    """Detach borrowed hardware-in-the-loop interfaces from our bridges and drop our qdisc; never delete them."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    done: list[str] = []
    hil = entry.get("hil") or {}
    if not isinstance(hil, dict):
        return done
    with IPRoute() as ipr:
        for ifname in hil.values():
            idx = ipr.link_lookup(ifname=str(ifname))
            if not idx:
                continue
            with contextlib.suppress(NetlinkError):
                ipr.link("set", index=idx[0], master=0)
                done.append(f"detached hardware-in-the-loop interface {ifname} from its rack bridge")
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", index=idx[0], handle=0, parent=0xFFFFFFFF)
                done.append(f"removed the shaping qdisc of {ifname}")
    return done


def _netns_entries(tags: Callable[[str], bool]) -> list[str]:
    done: list[str] = []
    if not NETNS_DIR.is_dir():
        return done
    for p in sorted(NETNS_DIR.iterdir()):
        if _ours(p.name, tags):
            subprocess.run(["umount", str(p)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                p.unlink()
                done.append(f"removed namespace entry {p}")
    return done


def _iptables_rules() -> list[str]:
    done: list[str] = []
    for tool in ("iptables", "ip6tables"):
        try:
            saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False).stdout
        except FileNotFoundError:
            continue
        table = None
        for line in saved.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-A ") and table and any(c in line for c in IPTABLES_COMMENTS):
                spec = ["-D", *_split_rule(line[3:])]
                r = subprocess.run([tool, "-t", table, *spec], capture_output=True, text=True, check=False)
                done.append(f"removed {tool} rule -t {table} {line}" if r.returncode == 0
                            else f"could not remove {tool} rule -t {table} {line}: {r.stderr.strip()}")
    return done


def _split_rule(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def _restore_sysctls(saved: dict[str, str]) -> list[str]:
    done: list[str] = []
    for key, value in saved.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            if path.read_text().strip() != str(value):
                path.write_text(f"{value}\n")
                done.append(f"restored sysctl {key} = {value}")
        except OSError:
            pass
    return done


def sweep_tag(tag: str) -> list[str]:
    """Remove every process, interface and namespace entry of one run (its own stop() uses this)."""
    def mine(t: str) -> bool:
        return t == tag

    done = _kill_processes(mine)
    done += _delete_links(mine)
    done += _netns_entries(mine)
    return done


DRILL_MOUNT_SOURCE = "scaledist-diskfull"  # the tmpfs a disk_full drill mounts over a slave's data directory


def _drill_mounts() -> list[str]:
    """Unmount (lazily) every tmpfs a killed disk_full drill left over a slave's data directory."""
    done: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) > 4 and len(rest) > 1 and rest[0] == "tmpfs" and rest[1] == DRILL_MOUNT_SOURCE:
            target = fields[4].replace("\\040", " ")
            r = subprocess.run(["umount", "-l", target], capture_output=True, text=True)
            done.append(f"unmounted drill tmpfs {target}" if r.returncode == 0
                        else f"could not unmount drill tmpfs {target}: {r.stderr.strip()}")
    return done


def clean(log: Callable[[str], None] = print, *, include_live: bool = False,
          only: Collection[str] | None = None) -> list[str]:
    """Remove leftovers of killed runs and say what was removed (one line each).

    Runs whose owner process is alive are skipped unless ``include_live``; ``only`` limits the
    cleaning to the given run tags (tests on a shared machine).
    """
    registry = _read_registry()
    live = set() if include_live else {t for t, (_, e) in registry.items() if _entry_alive(e)}

    def leftover(t: str) -> bool:
        return t not in live and (only is None or t in only)

    done: list[str] = []
    done += _kill_processes(leftover)
    for tag, (_, entry) in registry.items():
        if leftover(tag):
            done += _release_hil(entry)
    done += _delete_links(leftover)
    done += _netns_entries(leftover)
    # machine-wide state (root iptables, bridge-nf sysctls) only when no other run is alive to need it
    if not any(_entry_alive(e) for t, (_, e) in registry.items() if not leftover(t)):
        done += _iptables_rules()
        done += _drill_mounts()
        saved: dict[str, str] = {}
        # the earliest run's saved values are the machine's own (later runs may have saved ours)
        mine = [(t, e) for t, (_, e) in registry.items() if leftover(t)]
        for _, entry in sorted(mine, key=lambda te: float(te[1].get("created", 0) or 0), reverse=True):
            s = entry.get("sysctl_saved")
            if isinstance(s, dict):
                saved.update({str(k): str(v) for k, v in s.items()})
        done += _restore_sysctls(saved)
    for tag, (path, _) in registry.items():
        if leftover(tag):
            with contextlib.suppress(OSError):
                path.unlink()
                done.append(f"removed run record {path}")
    for line in done:
        log(line)
    if not done:
        log("nothing to clean")
    return done

