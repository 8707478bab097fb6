"""Central pull: every slave fetches every file straight from the generator's host over plain HTTP.

No coordination at all: the generator's host runs Python's own threaded ``http.server`` on its data
address; every slave runs one client that, as soon as a file version is published, fetches it with
``urllib`` in its own thread -- all files, all slaves, all at once.  A fetch is written to a temporary file
and renamed when complete; a newer version of the same file aborts an older fetch (want-newest).

``python -m testbed.baselines.central client ...`` is the client run inside each slave's host.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from testbed.baselines import BaselineRun, Publication, read_catalog, wanted, write_status

PORT = 8000
CHUNK = 1 << 16
RETRY_S = 1.0


class Central:
    name = "central"

    def settings(self) -> dict[str, Any]:
        return {"server": "python -m http.server (ThreadingHTTPServer), HTTP/1.0, one per generator host",
                "client": "urllib, one thread per file version, all at once, no coordination",
                "port": PORT, "chunk_bytes": CHUNK, "retry_s": RETRY_S}

    def start(self, run: BaselineRun) -> None:
        topo = run.topology
        for src in sorted({g.slave for g in topo.generators.values()}):
            d = run.data_dir(src)
            d.mkdir(parents=True, exist_ok=True)
            ip = run.net.ip(src)
            run.spawn(f"http-{src}", "server", src, run.python("http.server", "--bind", ip, "--directory", str(d),
                                                                 str(PORT)))
        for s, slave in sorted(topo.slaves.items()):
            run.data_dir(s).mkdir(parents=True, exist_ok=True)
            run.spawn(f"client-{s}", "client", s, run.python(
                "testbed.baselines.central", "client", "--slave", s, "--filesets", ",".join(slave.filesets),
                "--catalog", str(run.catalog), "--data-dir", str(run.data_dir(s)), "--status", str(run.status_path(s))))
        _wait_listening(run, sorted({g.slave for g in topo.generators.values()}))

    def prepare(self, run: BaselineRun, pub: Publication) -> dict[str, Any]:
        return {"url": f"http://{run.net.ip(pub.source)}:{PORT}/{pub.version.fileset}/{pub.name}"}


def _wait_listening(run: BaselineRun, sources: list[str]) -> None:
    for src in sources:
        _wait_port(run, src, PORT, f"the HTTP server on {src}")


def _wait_port(run: BaselineRun, host: str, port: int, what: str, timeout: float = 15.0) -> None:
    """``what`` accepts connections on ``host``'s data address before anything is published (probed from
    another slave's host: the root namespace has no route into the network)."""
    from testbed.run import connect_in_netns

    probe_from = next(s for s in run.topology.slaves if s != host)
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect_in_netns(run.net.host(probe_from).pid, (run.net.ip(host), port)).close()
            return
        except OSError:
            run.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen within {timeout:g}s") from None
            time.sleep(0.1)


# --- the client, inside a slave's host --------------------------------------------------------------


def client(args: argparse.Namespace) -> int:
    mine = set(args.filesets.split(","))
    data = Path(args.data_dir)
    status_path = Path(args.status)
    lock = threading.Lock()
    done: dict[str, float] = {}
    held: dict[str, int] = {}
    newest: dict[tuple[str, str], str] = {}
    started: set[str] = set()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def fetch(e: dict[str, Any]) -> None:
        final = data / e["fileset"] / e["name"]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part")
        while not stop.is_set():
            try:
                n = 0
                with urllib.request.urlopen(e["url"], timeout=120) as r, tmp.open("wb") as f:
                    while chunk := r.read(CHUNK):
                        f.write(chunk)
                        n += len(chunk)
                        with lock:
                            held[e["key"]] = n
                            if newest.get((e["fileset"], e["file"])) != e["key"] or stop.is_set():
                                print(f"{e['key']} superseded after {n} bytes", flush=True)
                                tmp.unlink(missing_ok=True)
                                return
                if n != e["size"]:
                    raise OSError(f"short read: {n} of {e['size']} bytes")
                os.replace(tmp, final)
                with lock:
                    done[e["key"]] = time.monotonic()
                print(f"{e['key']} complete: {n} bytes", flush=True)
                return
            except OSError as ex:
                print(f"{e['key']}: {ex}; retrying", flush=True)
                stop.wait(RETRY_S)

    entries: list[dict[str, Any]] = []
    offset = 0
    catalog = Path(args.catalog)
    while not stop.is_set():
        offset = read_catalog(catalog, offset, entries)
        for (fs, fid), e in wanted(entries, mine).items():
            with lock:
                newest[(fs, fid)] = e["key"]
            if e["key"] in started:
                continue
            started.add(e["key"])
            if e["source"] == args.slave:
                with lock:
                    done[e["key"]] = time.monotonic()
                continue
            threading.Thread(target=fetch, args=(e,), daemon=True).start()
        with lock:
            write_status(status_path, {"done": dict(done), "bytes": dict(held)})
        stop.wait(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.baselines.central")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="fetch every published file of the given filesets from its source")
    c.add_argument("--slave", required=True)
    c.add_argument("--filesets", required=True)
    c.add_argument("--catalog", required=True)
    c.add_argument("--data-dir", required=True)
    c.add_argument("--status", required=True)
    args = p.parse_args(argv)
    return client(args)


if __name__ == "__main__":
    raise SystemExit(main())
