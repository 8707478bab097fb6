"""`scaledist status`: asks the resource manager and every master what they know right now."""

from __future__ import annotations

import json
import sys

from scaledist import netio
from scaledist.cluster import load_cluster
from scaledist.messages import StatusQuery, StatusReply
from scaledist.topology_schema import load_topology
from scaledist.wire import Codec


async def query(cluster_path: str) -> dict[str, object]:
    cluster = load_cluster(cluster_path)
    topo = load_topology(cluster.topology)
    codec = Codec(cluster.key, "status")
    out: dict[str, object] = {}
    for ident in [topo.resource_manager.id, *topo.masters]:
        ep = cluster.endpoint(ident)
        try:
            reply = await netio.call(cluster.control_host(ident), ep.control, codec, StatusQuery(), timeout=5.0)
            out[ident] = reply.body if isinstance(reply, StatusReply) else {"error": repr(reply)}
        except Exception as e:
            out[ident] = {"error": f"unreachable: {e}"}
    return out


def render(status: dict[str, object]) -> str:
    lines: list[str] = []
    for ident, body in status.items():
        if not isinstance(body, dict):
            continue
        if "error" in body:
            lines.append(f"{ident}: {body['error']}")
            continue
        if "progress" in body:
            lines.append(f"master {ident}:")
            for fs, p in sorted(body["progress"].items()):
                lines.append(f"  fileset {fs}: {p.get('complete')}/{p.get('slaves')} slaves complete, "
                             f"{p.get('bytes_held', 0) / 1e6:.1f}/{p.get('bytes_wanted', 0) / 1e6:.1f} MB")
            state = body.get("state", {})
            per_slave = state.get("slaves", {}) if isinstance(state, dict) else {}
            for slave, info in sorted(per_slave.items()):
                lines.append(f"    {slave}: {json.dumps(info, default=str)[:160]}")
        else:
            lines.append(f"resource manager {ident}: epoch {body.get('epoch')}, "
                         f"{body.get('active', body.get('active_transfers', '?'))} active transfers, "
                         f"granted {body.get('granted')}, denied {body.get('denied')}")
            links = body.get("links", {})
            for link, info in sorted(links.items()) if isinstance(links, dict) else []:
                pools = info.get("pools", {})
                pool_txt = " ".join(f"{p}:{v.get('remaining', 0) / 1e6:.1f}/{v.get('allocated', 0) / 1e6:.1f}MB"
                                    for p, v in sorted(pools.items()))
                lines.append(f"  {link}: {info.get('rate_in_use', 0) / 1e6:.2f}/{info.get('capacity', 0) / 1e6:.2f}"
                             f" MB/s in use; pools {pool_txt}")
    return "\n".join(lines)


async def show_status(cluster_path: str, as_json: bool) -> int:
    status = await query(cluster_path)
    if as_json:
        print(json.dumps(status, indent=1, default=str))
    else:
        print(render(status))
    errors = [k for k, v in status.items() if isinstance(v, dict) and "error" in v]
    if errors:
        print(f"unreachable: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0
