"""BitTorrent: a real tracker (opentracker) and real clients (libtorrent) on every slave; the generator's host seeds.

One torrent per file version, made with ``libtorrent.create_torrent`` when the version is published; its
tracker is opentracker on the first generator's host (data address).  Every slave runs one libtorrent
session (``python -m testbed.baselines.bittorrent client ...``) that joins the torrent of the newest version of
every file of its filesets; the generator's slave adds its own versions in seed mode (it just hashed them).
A newer version makes clients drop the older torrent (want-newest).  libtorrent checks every piece's SHA-1
before it counts; the bench also checks sha256 of every final file.

Settings: libtorrent's defaults (choking, piece picking, uTP and TCP, PEX) plus what a careful operator sets
on a private network: no DHT, no local service discovery, no UPnP/NAT-PMP, several connections per IP
allowed, listening on the host's data address only.  No rate limit is set, so libtorrent's exemption of
local peers from rate limits changes nothing.  The settings used are written to ``settings.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from testbed.baselines import BaselineRun, Publication, read_catalog, wanted, write_status

TRACKER_PORT = 6969
PEER_PORT = 6881
MIN_PIECE = 16 * 1024
PIECES_TARGET = 64  # a careful operator picks small pieces for small files, so the swarm has pieces to trade


def session_settings(ip: str) -> dict[str, Any]:
    """libtorrent defaults, plus the private-network settings of the module docstring."""
    return {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "listen_interfaces": f"{ip}:{PEER_PORT}",
        "outgoing_interfaces": ip,
        "alert_mask": 0,
    }


def piece_size(size: int, block_size: int) -> int:
    """A power of two giving about PIECES_TARGET pieces, at least 16 KiB (BitTorrent's block), at most one
    ScaleDist block."""
    p = MIN_PIECE
    while p * 2 <= min(block_size, max(MIN_PIECE, size // PIECES_TARGET)):
        p *= 2
    return p


class BitTorrent:
    name = "bittorrent"

    def __init__(self) -> None:
        self.tracker = ""
        self.hashes: list[str] = []

    def settings(self) -> dict[str, Any]:
        import libtorrent as lt

        return {"libtorrent": lt.__version__, "tracker": "opentracker (Debian), HTTP announce",
                "session": session_settings("<slave data address>"),
                "piece_size": f"power of two ~{PIECES_TARGET} pieces a file, >= {MIN_PIECE} B, <= block size",
                "torrents": "one per file version; the generator's slave adds its own in seed_mode",
                "defaults_of_note": {k: lt.default_settings()[k] for k in (
                    "connections_limit", "unchoke_slots_limit", "choking_algorithm", "enable_outgoing_utp",
                    "enable_incoming_utp", "ignore_limits_on_local_network") if k in lt.default_settings()}}

    def start(self, run: BaselineRun) -> None:
        topo = run.topology
        host = _tracker_host(run)
        ip = run.net.ip(host)
        # Debian's opentracker only serves whitelisted info hashes; it chroots into -d, so -w is inside it
        chroot = run.rdir / "tracker"
        chroot.mkdir(exist_ok=True)
        (chroot / "whitelist.txt").write_text("".join(f"{h}\n" for h in self.hashes))
        run.spawn("opentracker", "tracker", host, ["opentracker", "-i", ip, "-p", str(TRACKER_PORT),
                                                   "-P", str(TRACKER_PORT), "-d", str(chroot),
                                                   "-w", "/whitelist.txt"])
        for s, slave in sorted(topo.slaves.items()):
            run.data_dir(s).mkdir(parents=True, exist_ok=True)
            run.spawn(f"client-{s}", "client", s, run.python(
                "testbed.baselines.bittorrent", "client", "--slave", s, "--ip", run.net.ip(s),
                "--filesets", ",".join(slave.filesets), "--catalog", str(run.catalog),
                "--data-dir", str(run.data_dir(s)), "--status", str(run.status_path(s))))
        from testbed.baselines.central import _wait_port

        _wait_port(run, host, TRACKER_PORT, "opentracker")

    def prepare(self, run: BaselineRun, pub: Publication) -> dict[str, Any]:
        import libtorrent as lt

        if not self.tracker:
            self.tracker = f"http://{run.net.ip(_tracker_host(run))}:{TRACKER_PORT}/announce"
            (run.rdir / "torrents").mkdir(exist_ok=True)

        path = run.data_dir(pub.source) / pub.version.fileset / pub.name
        fs = lt.file_storage()
        lt.add_files(fs, str(path))
        ct = lt.create_torrent(fs, piece_size(pub.version.size, run.topology.block_size))
        ct.add_tracker(self.tracker)
        ct.set_creator("scaledist bench")
        lt.set_piece_hashes(ct, str(path.parent))
        out = run.rdir / "torrents" / f"{pub.version.fileset}-{pub.name}.torrent"
        out.write_bytes(lt.bencode(ct.generate()))
        info_hash = str(lt.torrent_info(str(out)).info_hash())
        self.hashes.append(info_hash)
        return {"torrent": str(out), "piece_size": ct.piece_length(), "info_hash": info_hash}


def _tracker_host(run: BaselineRun) -> str:
    """The first generator's host (by slave id)."""
    return sorted({g.slave for g in run.topology.generators.values()})[0]


# --- the client, inside a slave's host --------------------------------------------------------------


def client(args: argparse.Namespace) -> int:
    import libtorrent as lt

    mine = set(args.filesets.split(","))
    data = Path(args.data_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = session_settings(args.ip)
    ses = lt.session(settings)
    print(f"libtorrent {lt.__version__} session on {args.ip}:{PEER_PORT}: {json.dumps(settings)}", flush=True)
    handles: dict[str, Any] = {}  # key -> torrent handle
    done: dict[str, float] = {}
    held: dict[str, int] = {}
    entries: list[dict[str, Any]] = []
    offset = 0
    catalog = Path(args.catalog)
    last_line = 0.0
    while not stop.is_set():
        offset = read_catalog(catalog, offset, entries)
        want = {e["key"]: e for e in wanted(entries, mine).values()}
        for key, e in want.items():
            if key in handles:
                continue
            atp = lt.add_torrent_params()
            atp.ti = lt.torrent_info(e["torrent"])
            atp.save_path = str(data / e["fileset"])
            if e["source"] == args.slave:
                atp.flags |= lt.torrent_flags.seed_mode
            handles[key] = ses.add_torrent(atp)
            print(f"{key}: added ({'seeding' if e['source'] == args.slave else 'downloading'})", flush=True)
        for key in [k for k in handles if k not in want]:
            ses.remove_torrent(handles.pop(key))
            print(f"{key}: superseded, removed", flush=True)
        for key, h in handles.items():
            st = h.status()
            held[key] = int(st.total_wanted_done)
            if st.is_seeding and key not in done:
                done[key] = time.monotonic()
                print(f"{key}: complete ({st.num_peers} peers)", flush=True)
        write_status(Path(args.status), {"done": done, "bytes": held})
        if time.monotonic() - last_line >= 5.0:
            last_line = time.monotonic()
            parts = []
            for key, h in handles.items():
                st = h.status()
                parts.append(f"{key} {st.progress * 100:.0f}% peers {st.num_peers} down {st.download_rate / 1e3:.0f}"
                             f" up {st.upload_rate / 1e3:.0f} kB/s")
            print(" | ".join(parts), flush=True)
        stop.wait(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.baselines.bittorrent")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("client", help="join the torrents of the newest version of every file of the filesets")
    for opt in ("--slave", "--ip", "--filesets", "--catalog", "--data-dir", "--status"):
        c.add_argument(opt, required=True)
    return client(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
