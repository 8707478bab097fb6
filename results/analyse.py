"""A run folder's records, turned into the figures a network engineer checks: did every trunk's budget hold?

``analyse(run_dir)`` reads what a run left behind and returns one JSON-able dict; nothing here
talks to the network or writes a file (``results.report`` writes).  Inputs, each optional but
``summary.json``, and what happens without them (every gap becomes a line in ``notes``):

* ``summary.json`` -- the testbed's: topology and scenario paths, scale, settings, completion,
  daemons, and per trunk direction the qdisc bytes/drops and 5 s peak (used when nothing finer exists);
* ``ledger.jsonl`` -- the resource manager's reservations (:mod:`scaledist.core.ledger`): bytes
  reserved per (epoch, link) = grant + carry records; ``allocate`` records give the pools per epoch;
* ``epochs.jsonl`` -- the measurement (``traffic/``): one record per resource-manager epoch with the
  qdisc statistics of every link direction (bytes, packets, drops, overlimits, backlog);
* ``flows.json`` -- per trunk the captured flows matched to transfer ids, unreserved bytes, capture drops;
* ``crossload.json`` -- background load that ran, ``measurement.json`` -- the measurement's own CPU;
* ``logs/*.log`` -- slaves' ``got`` lines (completion over time), generators' ``generated`` lines (versions).

Verdict per trunk (primary direction), the rules in one place:

* the resource manager reserves block *payload* bytes; a link carries frames.  The payload an epoch
  carried is estimated from the interface counters as ``bytes - HEADER_BYTES x packets`` (Ethernet 14 +
  IPv4 20 + TCP 20 + timestamps 12 = 66 B a frame; an ACK-only frame counts 0), which matches the
  capture's TCP payload within 0.01 % on a real run; declared cross traffic (flows.json's measured
  ``cross_bytes``, else ``crossload.json``'s rate x window) is taken off first;
* bytes may flow up to one epoch after the epoch that reserved them (a grant near an epoch's end is
  instructed, connected and started a few round trips later): what an epoch's reservation left unused
  is allowed in the next epoch, and only there;
* an epoch is **over its reservation** when its payload > (its reservation + the previous epoch's unused
  part) x (1 + OVER_TOLERANCE) *and* the excess is > TINY_FRACTION x budget x epoch -- so an epoch whose
  reservation is tiny (a FileSet file, a block's tail) is not failed for a few kB -- or when its frames
  exceeded the budget x epoch x (1 + OVER_TOLERANCE) outright.  ``epochs_over_strict`` also counts,
  for reference, the epochs whose payload exceeded their own reservation alone (+5 %, same floor);
* FAIL if any epoch is over its reservation, or the primary direction's qdisc dropped packets, or the
  RM reserved more in an epoch than the link's physical rate carries (when the topology names one), or
  the RM granted a pacing rate above the physical rate (+5 %): a budget larger than the link is caught
  by the first grant that uses it, however lightly the run loads the trunk; PASS otherwise.  Without
  per-epoch measurement the verdict falls back to the testbed's own before/after qdisc drops and 5 s peak
  rate against the budget, and says so in its reason.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaledist.core.ledger import LedgerRecord, read_ledger, reserved_bytes
from scaledist.scenario import Scenario, load_scenario
from scaledist.topology import Topology
from scaledist.topology_schema import load_topology

OVER_TOLERANCE = 0.05  # payload may exceed what was reserved by 5 %
TINY_FRACTION = 0.01  # ... and an epoch is only failed if the excess is > 1 % of budget x epoch
ACTIVE_FRACTION = 0.01  # a pool "carried bytes" in an epoch (priority shares) if > 1 % of the link's bytes
HEADER_BYTES = 66  # per frame on the wire: Ethernet 14 + IPv4 20 + TCP 20 + TCP timestamps 12
CROSS_DATAGRAM = 1400  # IP bytes per cross-traffic datagram (traffic.crossload); its frame adds 14
PEAK_TOLERANCE = 0.05  # fallback without epochs: the testbed's 5 s peak may exceed the budget by 5 %
OPEN = "open"

PASS, FAIL, UNMEASURED = "PASS", "FAIL", "UNMEASURED"

_GOT = re.compile(r"^(\d\d):(\d\d):(\d\d(?:\.\d+)?) slave (\S+) got (\S+) ([^/\s]+)/(\S+)@(\d+)#(\d+) (\d+)B")
_GEN = re.compile(r"^(\d\d):(\d\d):(\d\d(?:\.\d+)?) generator (\S+) generated ([^/\s]+)/(\S+)@(\d+) (\d+)B")
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d(?:\.\d+)?) ")


# --- inputs ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything read from one run folder; ``notes`` says what was missing or odd."""

    path: Path
    summary: dict[str, Any]
    topology: Topology | None
    scenario: Scenario | None
    ledger: list[LedgerRecord]
    epochs: dict[int, dict[str, dict[str, float]]]  # epoch -> link -> deltas (bytes, packets, drops, ...)
    epoch_t: dict[int, float]
    flows: dict[str, Any] | None
    crossload: Any
    measurement: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    present: dict[str, bool] = field(default_factory=dict)
    spans: dict[int, int] = field(default_factory=dict)  # epoch -> epochs its measured reading covers


def _json(path: Path, notes: list[str], what: str) -> Any:
    if not path.exists():
        notes.append(f"{path.name} missing: {what}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} unreadable ({e}): {what}")
        return None


def testbed_trunks(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The testbed's per-direction trunk figures ('trunk/T1', 'trunk/T1/rev'), whether enriched yet or not."""
    if isinstance(summary.get("trunk_directions"), dict):
        return summary["trunk_directions"]
    tr = summary.get("trunks")
    if isinstance(tr, dict) and all(str(k).startswith("trunk/") for k in tr):
        return tr
    return {}


def load_run(run_dir: str | Path, topology: Topology | None = None) -> Run:
    """Reads a run folder; only a missing ``summary.json`` is an error (FileNotFoundError)."""
    path = Path(run_dir)
    notes: list[str] = []
    spath = path / "summary.json"
    if not spath.exists():
        raise FileNotFoundError(f"{spath}: no summary.json, not a run folder")
    summary = json.loads(spath.read_text())
    scale = float(summary.get("scale") or 1.0)
    base = None
    if topology is None and summary.get("topology"):
        try:
            base = load_topology(summary["topology"])
            topology = base.scaled(scale) if scale != 1.0 else base
        except Exception as e:  # a moved or edited topology file: report what can be reported
            notes.append(f"topology {summary['topology']} could not be loaded ({e}): no budgets")
    elif topology is None:
        notes.append("summary.json names no topology: no budgets")
    scenario = None
    if summary.get("scenario") and summary.get("scenario") != "None" and topology is not None:
        try:
            b = base or topology
            sc = load_scenario(summary["scenario"], b)
            factor = topology.block_size / b.block_size if base is not None else 1.0
            scenario = sc.scaled(factor) if factor != 1.0 else sc
        except Exception as e:
            notes.append(f"scenario {summary['scenario']} could not be loaded ({e})")
    ledger: list[LedgerRecord] = []
    lpath = path / "ledger.jsonl"
    if lpath.exists():
        try:
            ledger = read_ledger(lpath)
        except (OSError, ValueError) as e:
            notes.append(f"ledger.jsonl unreadable ({e}): nothing reserved is known")
    else:
        notes.append("ledger.jsonl missing: nothing reserved is known")
    spans: dict[int, int] = {}
    epochs, epoch_t = read_epochs(path / "epochs.jsonl", notes, spans)
    flows = _json(path / "flows.json", notes, "no per-flow bytes; priority shares from reserved bytes")
    crossload = _json(path / "crossload.json", [], "")
    measurement = _json(path / "measurement.json", notes, "the measurement's CPU is unknown")
    present = {n: (path / n).exists() for n in ("summary.json", "ledger.jsonl", "epochs.jsonl", "flows.json",
                                                 "crossload.json", "measurement.json", "qdisc.jsonl", "audit.json")}
    present["logs"] = (path / "logs").is_dir()
    return Run(path, summary, topology, scenario, ledger, epochs, epoch_t, flows, crossload, measurement, notes,
               present, spans)


def read_epochs(path: Path, notes: list[str], spans: dict[int, int] | None = None,
                ) -> tuple[dict[int, dict[str, dict[str, float]]], dict[int, float]]:
    """``epochs.jsonl`` as per-epoch deltas: epoch -> link -> {bytes, packets, drops, overlimits, backlog}.

    ``traffic.sampler`` writes one JSON object a line: ``epoch``, ``epochs`` (how many epochs the reading
    spans: more than 1 when a boundary was missed), ``t_start``/``t_end`` (seconds since the RM's epoch 0),
    ``partial`` and ``links`` -> link -> deltas over the span (``bytes``/``packets``: the egress interface,
    Ethernet headers included; ``qdisc_*``, ``drops``, ``overlimits``; ``backlog`` a level).  A record that
    says ``"counters": true`` holds cumulative values instead and consecutive records are differenced.
    A torn last line is skipped.  ``spans`` gets epoch -> number of epochs its reading covers.
    """
    out: dict[int, dict[str, dict[str, float]]] = {}
    ts: dict[int, float] = {}
    if not path.exists():
        notes.append("epochs.jsonl missing: no per-epoch measurement; verdicts fall back to the testbed's "
                     "before/after qdisc drops and 5 s peak rates")
        return out, ts
    lines = path.read_text().splitlines()
    prev: dict[str, dict[str, float]] = {}
    bad = 0
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            e = int(rec["epoch"])
        except (ValueError, KeyError, TypeError):
            if n != len(lines) - 1:
                bad += 1
            continue
        links = rec.get("links")
        if not isinstance(links, dict):
            links = {k: v for k, v in rec.items() if isinstance(v, dict) and "bytes" in v}
        counters = bool(rec.get("counters") or rec.get("cumulative"))
        cur: dict[str, dict[str, float]] = {}
        for link, st in links.items():
            if not isinstance(st, dict):
                continue
            vals = {k: float(v) for k, v in st.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if counters:
                p = prev.get(link)
                d = {k: (v if k == "backlog" or p is None else max(0.0, v - p.get(k, 0.0))) for k, v in vals.items()}
                prev[link] = vals
                if p is None:
                    continue  # the first reading of a counter is a baseline, not an epoch's traffic
                vals = d
            cur[link] = vals
        if cur:
            slot = out.setdefault(e, {})
            for link, vals in cur.items():
                old = slot.get(link)
                if old is None:
                    slot[link] = vals
                else:  # two readings of one epoch: add the deltas, keep the last backlog
                    for k, v in vals.items():
                        old[k] = v if k == "backlog" else old.get(k, 0.0) + v
            t = rec.get("t", rec.get("t_start"))
            if isinstance(t, (int, float)):
                ts.setdefault(e, float(t))
            if spans is not None:
                spans[e] = max(1, int(rec.get("epochs", 1) or 1))
    if bad:
        notes.append(f"epochs.jsonl: {bad} unreadable lines skipped")
    if not out:
        notes.append("epochs.jsonl holds no epochs: no per-epoch measurement")
    return out, ts


# --- helpers -----------------------------------------------------------------------------------------------


def _tod(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


class _Clock:
    """Log time of day -> seconds since the first line, across midnight."""

    def __init__(self) -> None:
        self.last = -1.0
        self.wrap = 0.0

    def __call__(self, tod: float) -> float:
        if self.last >= 0 and tod + 6 * 3600 < self.last:  # went back by hours: the day changed
            self.wrap += 86400.0
        self.last = tod
        return tod + self.wrap


def file_versions(run: Run) -> dict[str, dict[tuple[str, int], int]]:
    """fileset -> (file id, version) -> size, from the generators' logs, else as the generator numbers them."""
    out: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
    logs = run.path / "logs"
    if logs.is_dir():
        for f in sorted(logs.glob("*.log")):
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            if " generator " not in text:
                continue
            for line in text.splitlines():
                m = _GEN.match(line)
                if m:
                    out[m.group(5)][(m.group(6), int(m.group(7)))] = int(m.group(8))
    if out:
        return dict(out)
    if run.scenario is None:
        return {}
    for fs, plan in run.scenario.filesets.items():
        events = sorted([(f.start, f.id, f.size) for f in plan.files] + [(u.at, u.file, u.size)
                                                                            for u in plan.updates],
                        key=lambda e: e[0])
        versions: dict[str, int] = {}
        i = 0
        while i < len(events):  # as the generator: a file started and updated at one instant is one version
            at = events[i][0]
            batch = [e for e in events[i:] if e[0] == at]
            i += len(batch)
            last = {fid: size for _, fid, size in batch}
            for fid, size in last.items():
                versions[fid] = versions.get(fid, 0) + 1
                out[fs][(fid, versions[fid])] = size
    return dict(out)


def _dc_of_slave(topo: Topology, slave: str) -> str | None:
    s = topo.slaves.get(slave)
    return s.dc if s else None


# --- the analysis ------------------------------------------------------------------------------------------


def analyse(run_dir: str | Path, topology: Topology | None = None) -> dict[str, Any]:
    """Every figure of the report for one run folder (see the module docstring for the rules)."""
    run = load_run(run_dir, topology)
    topo = run.topology
    epoch_s = float(topo.epoch) if topo else 1.0
    reserved = reserved_bytes(run.ledger)
    measured = run.epochs
    have_epochs = bool(measured)
    cross = _cross_per_epoch(run, epoch_s)

    # every (epoch, link) either side knows of
    links: set[str] = {link for _, link in reserved}
    for per in measured.values():
        links.update(per)
    if topo:
        links.update(f"trunk/{t}" for t in topo.trunks)
        links.update(f"trunk/{t}/rev" for t in topo.trunks)
    epochs_all = sorted(set(measured) | {e for e, _ in reserved})
    t_of = _epoch_times(run, epochs_all, epoch_s)

    rows: list[dict[str, Any]] = []
    for e in epochs_all:
        for link in sorted(links):
            m = measured.get(e, {}).get(link)
            r = reserved.get((e, link), 0)
            if m is None and not r:
                continue
            rows.append({
                "epoch": e, "t": t_of.get(e), "link": link, "reserved_bytes": r,
                "measured_bytes": None if m is None else int(m.get("bytes", 0)),
                "drops": None if m is None else int(m.get("drops", 0)),
                "backlog": None if m is None else int(m.get("backlog", 0)),
            })

    link_rows = {}
    for link in sorted(links):
        cap = topo.links[link].capacity if topo and link in topo.links else None
        phys = getattr(topo.links[link], "physical", None) if topo and link in topo.links else None
        ms = [measured[e][link] for e in measured if link in measured[e]]
        link_rows[link] = {
            "link": link,
            "kind": link.split("/")[0],
            "budget_bytes_per_s": cap,
            "physical_bytes_per_s": phys if phys is not None else cap,
            "reserved_bytes": sum(v for (_, lk), v in reserved.items() if lk == link),
            "measured_bytes": int(sum(m.get("bytes", 0) for m in ms)) if ms else None,
            "drops": int(sum(m.get("drops", 0) for m in ms)) if ms else None,
            "max_backlog": int(max(m.get("backlog", 0) for m in ms)) if ms else None,
            "epochs_measured": len(ms),
        }

    trunks, series = _trunks(run, reserved, cross, epoch_s, have_epochs)
    for tid, tr in trunks.items():
        for link in (f"trunk/{tid}", f"trunk/{tid}/rev"):
            if link in link_rows and link == f"trunk/{tid}":
                link_rows[link].update({"verdict": tr["verdict"], "reason": tr["reason"],
                                        "max_epoch_utilisation": tr["max_epoch_utilisation"],
                                        "epochs_over_budget": tr["epochs_over_budget"]})

    eff = _trunk_efficiency(run, reserved, cross)
    shares, share_series = _priority_shares(run, reserved)
    completion = _completion(run)
    m = run.measurement or {}
    return {
        "run_dir": str(run.path),
        "id": run.summary.get("id", run.path.name),
        "notes": run.notes,
        "inputs": run.present,
        "epoch_s": epoch_s,
        "rules": {"over_tolerance": OVER_TOLERANCE, "tiny_fraction": TINY_FRACTION,
                  "header_bytes": HEADER_BYTES,
                  "text": f"an epoch is over its reservation when the payload the trunk carried (interface bytes "
                          f"- {HEADER_BYTES} B a frame, declared cross traffic taken off) exceeds what was reserved "
                          f"for it plus what the previous epoch's reservation left unused, x {1 + OVER_TOLERANCE:g}, "
                          f"by more than {TINY_FRACTION:.0%} of budget x epoch, or its frames exceeded budget x "
                          f"epoch x {1 + OVER_TOLERANCE:g}; FAIL on any such epoch, any qdisc drop on the primary "
                          f"direction, or reservations beyond the physical rate"},
        "trunks": trunks,
        "trunk_series": series,
        **eff,
        "priority_shares": shares,
        "share_series": share_series,
        "daemons": run.summary.get("daemons", {}),
        "measurement_cpu_s": m.get("cpu_s") if isinstance(m, dict) else None,
        "links": link_rows,
        "epochs": rows,
        "completion": completion,
        "settings": _settings(run),
    }


def _epoch_times(run: Run, epochs: Iterable[int], epoch_s: float) -> dict[int, float]:
    """Seconds since the resource manager's epoch 0 for each epoch: measured ``t`` if given, else e x length."""
    out = {}
    for e in epochs:
        t = run.epoch_t.get(e)
        out[e] = round(t if t is not None else e * epoch_s, 3)
    return out


def _cross_per_epoch(run: Run, epoch_s: float) -> dict[tuple[int, str], float]:
    """Bytes of declared cross traffic per (epoch, link).

    ``crossload.json``: a list (or ``{"loads": [...]}``) of ``{link, rate (bytes/s), start, end|duration}``,
    times in seconds since the resource manager's epoch 0, or with per-epoch ``bytes`` measured
    (``{"link":..., "epochs": {"12": bytes}}``).  Unknown shapes are noted and ignored.
    """
    measured = _cross_from_flows(run)
    if measured:
        return measured
    data = run.crossload
    if data is None:
        return {}
    loads = data.get("loads", data.get("cross", [])) if isinstance(data, dict) else data
    out: dict[tuple[int, str], float] = defaultdict(float)
    if not isinstance(loads, list):
        run.notes.append("crossload.json: shape not understood, cross traffic not taken off measured bytes")
        return {}
    for ld in loads:
        if not isinstance(ld, dict) or "link" not in ld:
            continue
        link = str(ld["link"])
        if not link.startswith(("trunk/", "slave/", "rack/", "dc/")):
            link = f"trunk/{link}"
        if isinstance(ld.get("epochs"), dict):
            for e, b in ld["epochs"].items():
                out[(int(e), link)] += float(b)
            continue
        try:
            rate = float(ld["rate_bytes_per_s"] if "rate_bytes_per_s" in ld else ld["rate"])
            start = float(ld.get("start", 0.0))
            end = float(ld["end"]) if "end" in ld else start + float(ld["duration"])
        except (KeyError, TypeError, ValueError):
            continue
        e = max(0, math.floor(start / epoch_s))
        while e * epoch_s < end:
            lo, hi = max(start, e * epoch_s), min(end, (e + 1) * epoch_s)
            if hi > lo:
                out[(e, link)] += rate * (hi - lo)
            e += 1
    return dict(out)


def _wanted(reason: str) -> int:
    """Bytes a clamped carry wanted ('clamped: wanted 292969 B'), 0 if the reason says otherwise."""
    m = re.search(r"wanted (\d+) B", reason)
    return int(m.group(1)) if m else 0


def _payload(st: Mapping[str, float], cross_ip: float = 0.0) -> float:
    """Payload bytes in one link reading: frames' bytes less HEADER_BYTES each, cross traffic (IP bytes) off."""
    wire = float(st.get("bytes", 0.0))
    pkts = st.get("packets")
    xp = cross_ip / CROSS_DATAGRAM
    return max(0.0, wire - cross_ip - 14 * xp - (HEADER_BYTES * (float(pkts) - xp) if pkts is not None else 0.0))


def _cross_from_flows(run: Run) -> dict[tuple[int, str], float]:
    """Cross traffic the capture saw per (epoch, trunk): flows.json's ``per_epoch`` ``cross_bytes`` (IP bytes)."""
    out: dict[tuple[int, str], float] = {}
    root = run.flows.get("trunks", {}) if isinstance(run.flows, dict) else {}
    for tid, ent in root.items() if isinstance(root, dict) else ():
        per = ent.get("per_epoch") if isinstance(ent, dict) else None
        if not isinstance(per, dict):
            continue
        link = tid if str(tid).startswith("trunk/") else f"trunk/{tid}"
        for e, row in per.items():
            if isinstance(row, dict) and row.get("cross_bytes"):
                out[(int(e), link)] = float(row["cross_bytes"])
    return out


def _trunks(run: Run, reserved: Mapping[tuple[int, str], int], cross: Mapping[tuple[int, str], float],
            epoch_s: float, have_epochs: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    topo = run.topology
    if topo is None:
        return {}, {}
    testbed = testbed_trunks(run.summary)
    flows = run.flows or {}
    out: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for tid in sorted(topo.trunks):
        link = f"trunk/{tid}"
        rev = f"{link}/rev"
        lk = topo.links[link]
        budget = float(lk.capacity)
        physical = float(getattr(lk, "physical", None) or budget)
        per_epoch_budget = budget * epoch_s
        res = {e: v for (e, lid), v in reserved.items() if lid == link}
        meas = {e: run.epochs[e][link] for e in run.epochs if link in run.epochs[e]}
        meas_rev = {e: run.epochs[e][rev] for e in run.epochs if rev in run.epochs[e]}
        epochs = sorted(set(res) | set(meas))
        over: list[tuple[int, float, float]] = []
        payload_total = 0.0
        util = 0.0
        busiest = None
        unused = 0.0  # the previous epoch's reservation not yet carried
        strict = 0
        for e in sorted(meas):
            span = run.spans.get(e, 1)  # a reading over k epochs is held against k epochs' reservations
            cross_ip = sum(cross.get((e + i, link), 0.0) for i in range(span))
            # the budget is what ScaleDist may use (§0114: adjusted for other users): declared cross traffic,
            # with its frames' Ethernet headers, is not held against it
            wire = max(0.0, float(meas[e].get("bytes", 0.0)) - cross_ip * (1 + 14 / CROSS_DATAGRAM))
            b = _payload(meas[e], cross_ip)
            u = wire / (per_epoch_budget * span) if per_epoch_budget else 0.0
            if u > util:
                util, busiest = u, e
            r = sum(res.get(e + i, 0) for i in range(span))
            floor = TINY_FRACTION * per_epoch_budget * span
            allowed = (r + unused) * (1 + OVER_TOLERANCE)
            if (b > allowed and b - allowed > floor) or u > 1 + OVER_TOLERANCE:
                over.append((e, b, r + unused))
            if b > r * (1 + OVER_TOLERANCE) and b - r * (1 + OVER_TOLERANCE) > floor:
                strict += 1
            unused = max(0.0, r - max(0.0, b - unused))  # this epoch's bytes first use last epoch's leftover
            payload_total += b
        beyond_physical = [(e, r) for e, r in res.items() if r > physical * epoch_s * (1 + OVER_TOLERANCE)]
        # a pacing rate the trunk cannot carry: the RM believes a bigger trunk than there is, loaded or not
        fast = [rec.rate for rec in run.ledger
                if rec.kind == "grant" and rec.link == link and rec.rate > physical * (1 + OVER_TOLERANCE)]
        clamped = [_wanted(rec.reason) - rec.bytes for rec in run.ledger
                   if rec.kind == "carry" and rec.link == link and rec.reason.startswith("clamped")]
        tb = testbed.get(link, {})
        drops: int | None
        if meas:
            drops = int(sum(m.get("drops", 0) for m in meas.values()))
            drops_rev = int(sum(m.get("drops", 0) for m in meas_rev.values())) if meas_rev else None
            measured_bytes: int | None = int(sum(m.get("bytes", 0) for m in meas.values()))
        else:
            drops = tb.get("drops")
            drops_rev = testbed.get(rev, {}).get("drops")
            measured_bytes = tb.get("bytes") if tb.get("bytes") is not None else tb.get("sent_bytes")
        fl = _flows_of(flows, tid)
        reasons: list[str] = []
        if meas:
            if over:
                e, b, r = max(over, key=lambda x: x[1] - x[2])
                reasons.append(f"{len(over)} of {len(meas)} epochs carried more than reserved +"
                               f"{OVER_TOLERANCE:.0%} (worst: epoch {e}, {b / 1e6:.3f} MB payload measured vs "
                               f"{r / 1e6:.3f} MB reserved incl. the previous epoch's unused)")
                if util <= 1 + OVER_TOLERANCE:
                    reasons.append(f"the budget itself held (busiest epoch {util:.0%}): the traffic outran the "
                                   f"reservations, not the trunk")
                if clamped:
                    reasons.append(f"{len(clamped)} carries on this trunk were clamped by the RM (pool exhausted) "
                                   f"while their transfers ran on, {sum(clamped) / 1e6:.3f} MB unreserved")
            if drops:
                reasons.append(f"{drops} packets dropped by the trunk's qdisc")
            if beyond_physical:
                e, r = max(beyond_physical, key=lambda x: x[1])
                reasons.append(f"the RM reserved beyond the physical rate in {len(beyond_physical)} epochs "
                               f"(epoch {e}: {r / 1e6:.3f} MB vs {physical * epoch_s / 1e6:.3f} MB)")
            if fast:
                reasons.append(f"{len(fast)} grants paced faster than the trunk carries (up to "
                               f"{max(fast) / 1e6:.3f} MB/s vs {physical / 1e6:.3f} MB/s physical): the budget "
                               f"exceeds the link")
            verdict = FAIL if reasons else PASS
            if not reasons:
                reasons.append(f"0 of {len(meas)} epochs over reservation, no drops, busiest epoch "
                               f"{util:.0%} of budget")
        elif tb:
            peak = tb.get("peak_over_budget")
            if drops:
                reasons.append(f"{drops} packets dropped by the trunk's qdisc (run total)")
            if peak is not None and peak > 1 + PEAK_TOLERANCE:
                reasons.append(f"5 s peak {peak:.0%} of budget")
            if beyond_physical:
                reasons.append(f"the RM reserved beyond the physical rate in {len(beyond_physical)} epochs")
            if fast:
                reasons.append(f"{len(fast)} grants paced faster than the trunk carries")
            verdict = FAIL if reasons else PASS
            if not reasons:
                reasons.append(f"no drops, 5 s peak {(peak or 0):.0%} of budget")
            reasons.append("coarse: no per-epoch measurement")
            util = float(peak or 0.0)
        else:
            verdict = UNMEASURED
            reasons.append("no measurement of this trunk in the run folder")
        out[tid] = {
            "link": link,
            "from": topo.trunks[tid].start,
            "to": topo.trunks[tid].end,
            "budget_bytes_per_s": budget,
            "physical_bytes_per_s": physical,
            "grants_over_physical": len(fast),
            "reserved_bytes": int(sum(res.values())),
            "measured_bytes": measured_bytes,
            "cross_bytes": int(sum(v for (_, lid), v in cross.items() if lid == link)),
            "max_epoch_utilisation": round(util, 4) if (meas or tb) else None,
            "busiest_epoch": busiest,
            "epochs_measured": len(meas),
            "epochs_reserved": len(res),
            "epochs_over_budget": len(over) if meas else None,
            "epochs_over_strict": strict if meas else None,
            "clamped_carries": len(clamped),
            "clamped_bytes": int(sum(clamped)),
            "measured_payload_bytes": int(payload_total) if meas else None,
            "drops": drops,
            "drops_reverse": drops_rev,
            "flows": len(fl["flows"]) if fl else None,
            "unreserved_bytes": fl.get("unreserved_bytes") if fl else None,
            "capture_drops": fl.get("capture_drops") if fl else None,
            "verdict": verdict,
            "reason": "; ".join(reasons),
        }
        series[tid] = {
            "epochs": epochs,
            "reserved": [res.get(e, 0) for e in epochs],
            "measured": [float(meas[e].get("bytes", 0)) if e in meas else None for e in epochs],
            "budget_per_epoch": per_epoch_budget,
            "physical_per_epoch": physical * epoch_s,
        }
    return out, series


def _flows_of(flows: Mapping[str, Any], tid: str) -> dict[str, Any] | None:
    """One trunk's entry of flows.json (keyed 'T1' or 'trunk/T1', possibly under 'trunks'), flows as a list."""
    root = flows.get("trunks", flows) if isinstance(flows, dict) else {}
    ent = root.get(tid) or root.get(f"trunk/{tid}") if isinstance(root, dict) else None
    if not isinstance(ent, dict):
        return None
    fl = ent.get("flows", [])
    if isinstance(fl, dict):
        fl = [{"transfer_id": k, **(v if isinstance(v, dict) else {"bytes": v})} for k, v in fl.items()]
    return {**ent, "flows": [f for f in fl if isinstance(f, dict)]}


def _trunk_efficiency(run: Run, reserved: Mapping[tuple[int, str], int],
                      cross: Mapping[tuple[int, str], float]) -> dict[str, Any]:
    """Bytes over all trunks' primary directions / bytes each datacenter had to receive across trunks.

    Needed: every file version (generators' logs, else the scenario) once for every datacenter that has a
    slave of the fileset and no generator of it.  Carried, best source first: the bytes of the captured
    flows matched to transfers (payload of block copies only); else the per-epoch qdisc bytes minus declared
    cross traffic; else the testbed's before/after qdisc bytes.  ``trunk_efficiency_reserved`` is the same
    ratio from the ledger (block bytes the RM reserved on trunks), free of headers and capture gaps.
    """
    topo = run.topology
    res: dict[str, Any] = {"trunk_efficiency": None, "trunk_efficiency_basis": "", "trunk_efficiency_reserved": None}
    if topo is None:
        res["trunk_efficiency_basis"] = "no topology"
        return res
    versions = file_versions(run)
    need: dict[str, int] = defaultdict(int)
    for fs, files in versions.items():
        gen_dcs = {_dc_of_slave(topo, s) for s in topo.generator_slaves(fs)}
        dcs = {_dc_of_slave(topo, s) for s in topo.slaves_of_fileset(fs)} - gen_dcs - {None}
        total = sum(files.values())
        for dc in dcs:
            need[str(dc)] += total
    needed = sum(need.values())
    primaries = [f"trunk/{t}" for t in sorted(topo.trunks)]
    flows = run.flows or {}
    carried: float | None = None
    basis = ""
    per_trunk_flows = [_flows_of(flows, t) for t in sorted(topo.trunks)]
    if any(per_trunk_flows):
        flows_all = [f for fl in per_trunk_flows if fl for f in fl["flows"] if f.get("transfer_id")]
        payload = all("payload_bytes" in f for f in flows_all)
        carried = float(sum(float(f.get("payload_bytes" if payload else "bytes", 0)) for f in flows_all))
        basis = (f"{'TCP payload' if payload else 'IP'} bytes of the captured flows matched to transfers "
                 f"(flows.json)")
    elif run.epochs:
        carried = sum(_payload(run.epochs[e][lk], cross.get((e, lk), 0.0)) for e in run.epochs for lk in primaries
                      if lk in run.epochs[e])
        basis = (f"payload from the per-epoch interface counters (epochs.jsonl: bytes - {HEADER_BYTES} B a frame, "
                 f"declared cross traffic taken off)")
    else:
        tb = testbed_trunks(run.summary)
        vals = [tb.get(lk, {}).get("bytes") for lk in primaries]
        if any(v is not None for v in vals):
            carried = float(sum(v or 0 for v in vals))
            basis = "the testbed's before/after qdisc bytes (headers and any other traffic included)"
    wire = None
    if run.epochs:
        wire = sum(float(run.epochs[e][lk].get("bytes", 0)) for e in run.epochs for lk in primaries
                   if lk in run.epochs[e]) - sum(v for (_, lk), v in cross.items() if lk in primaries)
    rsv = sum(v for (_, lk), v in reserved.items() if lk in primaries)
    res.update({
        "trunk_efficiency": round(carried / needed, 4) if carried is not None and needed else None,
        "trunk_efficiency_basis": basis or "nothing measured on the trunks",
        "trunk_efficiency_reserved": round(rsv / needed, 4) if needed and run.ledger else None,
        "trunk_efficiency_wire": round(wire / needed, 4) if wire is not None and needed else None,
        "trunk_bytes": None if carried is None else int(carried),
        "trunk_reserved_bytes": int(rsv),
        "needed_bytes": needed,
        "needed_per_datacenter": dict(sorted(need.items())),
    })
    return res


def _priority_shares(run: Run, reserved: Mapping[tuple[int, str], int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per contended link (>= 2 priority pools allocated in one epoch): each pool's share of the bytes over
    those epochs against its weight share among the pools allocated (bytes-weighted over the epochs).
    Measured from flows matched to transfers where flows.json covers the link (trunks; a flow's bytes spread
    evenly over its first..last packet), else from reserved bytes -- ``basis`` says which.  A pool is
    allocated for a priority merely *requested* in the previous epoch (the FileSet files' P5 pool, a
    request that then failed elsewhere), so ``active_*`` repeats the comparison over the epochs where at
    least two pools carried bytes (each > ACTIVE_FRACTION of the epoch's), with weight shares among those
    pools only: that is the split the weights promise when the priorities actually compete."""
    topo = run.topology
    if topo is None or not run.ledger:
        return {}, {}
    epoch_s = float(topo.epoch)
    weights = {p.name: p.weight for p in topo.priorities}
    pools: dict[tuple[int, str], set[str]] = defaultdict(set)
    for r in run.ledger:
        if r.kind == "allocate" and r.link and r.priority:
            pools[(r.epoch, r.link)].add(r.priority)
    contended: dict[str, list[int]] = defaultdict(list)
    for (e, link), ps in pools.items():
        if len(ps) >= 2:
            contended[link].append(e)
    # per (epoch, link, pool) reserved bytes, and which pool each transfer drew on each link
    by_pool: dict[tuple[int, str, str], int] = defaultdict(int)
    pool_of: dict[tuple[str, str], tuple[int, str]] = {}  # (transfer, link) -> (grant epoch, request priority)
    for r in run.ledger:
        if r.kind in ("grant", "carry") and r.link and r.priority:
            by_pool[(r.epoch, r.link, r.priority)] += r.bytes
            if r.kind == "grant":
                try:
                    prio = topo.priority_of(r.fileset, fileset_file=r.file_id == r.fileset).name
                except KeyError:
                    prio = r.priority
                pool_of[(r.transfer_id, r.link)] = (r.epoch, prio)

    def pool_in(e: int, link: str, prio: str) -> str:
        """The pool a transfer of priority ``prio`` draws from on ``link`` in epoch ``e`` (the RM's rule: its own
        if allocated, else the highest allocated below it, else -- a running transfer -- the lowest)."""
        allocated = pools[(e, link)]
        if prio in allocated:
            return prio
        lvl = topo.priority_by_name[prio].level if prio in topo.priority_by_name else 0
        ranked = sorted(allocated, key=lambda n: topo.priority_by_name[n].level if n in topo.priority_by_name else 0)
        below = [n for n in ranked if n in topo.priority_by_name and topo.priority_by_name[n].level < lvl]
        return below[-1] if below else ranked[0]
    flows = run.flows or {}
    out: dict[str, Any] = {}
    series: dict[str, Any] = {}
    for link in sorted(contended):
        eps = sorted(contended[link])
        epset = set(eps)
        fl = _flows_of(flows, link.split("/")[1]) if link.startswith("trunk/") and not link.endswith("/rev") else None
        per_epoch: dict[int, dict[str, float]] = {e: defaultdict(float) for e in eps}
        basis = "reserved"
        if fl and fl["flows"]:
            basis = "flows"
            for f in fl["flows"]:
                key = (str(f.get("transfer_id") or ""), link)
                if key not in pool_of:
                    continue
                e0, prio = pool_of[key]
                for e, b in _flow_epochs(f, e0, epoch_s).items():
                    if e in epset:
                        per_epoch[e][pool_in(e, link, prio)] += b
        else:
            for e in eps:
                for p in pools[(e, link)] | {OPEN}:
                    b = by_pool.get((e, link, p), 0)
                    if b:
                        per_epoch[e][p] += b
        total = sum(sum(v.values()) for v in per_epoch.values())
        names = sorted({p for e in eps for p in pools[(e, link)]},
                       key=lambda n: topo.priority_by_name[n].level if n in topo.priority_by_name else 0)
        wsum_bytes: dict[str, float] = defaultdict(float)
        act_bytes: dict[str, float] = defaultdict(float)  # epochs where >= 2 pools carried bytes
        act_w: dict[str, float] = defaultdict(float)
        act_total = 0.0
        act_epochs = 0
        ws: dict[str, list[float]] = {p: [] for p in names}
        ms: dict[str, list[float]] = {p: [] for p in names}
        for e in eps:
            allocated = pools[(e, link)]
            wtot = sum(weights.get(p, 0) for p in allocated) or 1.0
            te = sum(per_epoch[e].values())
            active = {p for p in allocated if per_epoch[e].get(p, 0.0) > ACTIVE_FRACTION * te}
            atot = sum(weights.get(p, 0) for p in active) or 1.0
            if len(active) >= 2:
                act_epochs += 1
                act_total += te
            for p in names:
                wshare = weights.get(p, 0) / wtot if p in allocated else 0.0
                ws[p].append(wshare)
                ms[p].append(per_epoch[e].get(p, 0.0) / te if te else 0.0)
                wsum_bytes[p] += wshare * te
                if len(active) >= 2:
                    act_bytes[p] += per_epoch[e].get(p, 0.0)
                    act_w[p] += (weights.get(p, 0) / atot if p in active else 0.0) * te
        prios = {}
        for p in names:
            b = sum(per_epoch[e].get(p, 0.0) for e in eps)
            m = b / total if total else None
            w = wsum_bytes[p] / total if total else None
            am = act_bytes[p] / act_total if act_total else None
            aw = act_w[p] / act_total if act_total else None
            prios[p] = {"bytes": int(b), "measured_share": None if m is None else round(m, 4),
                        "weight_share": None if w is None else round(w, 4),
                        "diff_pp": None if m is None or w is None else round(100 * (m - w), 1),
                        "active_measured_share": None if am is None else round(am, 4),
                        "active_weight_share": None if aw is None else round(aw, 4),
                        "active_diff_pp": None if am is None or aw is None else round(100 * (am - aw), 1)}
        out[link] = {"basis": basis, "epochs": len(eps), "active_epochs": act_epochs, "bytes": int(total),
                     "priorities": prios}
        series[link] = {"epochs": eps, "measured": ms, "weight": ws, "basis": basis}
    return out, series


def _flow_epochs(f: Mapping[str, Any], e0: int, epoch_s: float) -> dict[int, float]:
    """A flow's bytes per RM epoch: its own ``epochs`` if given, else spread evenly over ``first_t..last_t``
    (seconds since epoch 0), else all in the epoch of its grant ``e0``."""
    b = float(f.get("bytes", 0) or 0)
    if isinstance(f.get("epochs"), dict):
        return {int(e): float(v) for e, v in f["epochs"].items()}
    t0, t1 = f.get("first_t"), f.get("last_t")
    if not isinstance(t0, (int, float)) or not isinstance(t1, (int, float)) or t1 < t0:
        return {e0: b}
    if t1 - t0 < 1e-9:
        return {math.floor(t0 / epoch_s): b}
    out: dict[int, float] = {}
    e = math.floor(t0 / epoch_s)
    while e * epoch_s < t1:
        lo, hi = max(t0, e * epoch_s), min(t1, (e + 1) * epoch_s)
        if hi > lo:
            out[e] = b * (hi - lo) / (t1 - t0)
        e += 1
    return out


def _completion(run: Run) -> dict[str, Any]:
    """Per fileset: the slaves that need it, when each held every file's newest version (from their logs)."""
    topo = run.topology
    versions = file_versions(run)
    comp_s = run.summary.get("completion_s") or {}
    logs = run.path / "logs"
    got: list[tuple[float, str, str, str, int, int, int]] = []  # (t, slave, fs, fid, version, block, size)
    clock = _Clock()
    origin: float | None = None
    if logs.is_dir():
        entries = []
        for f in sorted(logs.glob("*.log")):
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                ms = _STAMP.match(line)
                if not ms:
                    continue
                tod = _tod(*ms.groups())
                entries.append((tod, line))
        entries.sort(key=lambda x: x[0])
        # a run crossing midnight: sort by time of day breaks; acceptable (runs last minutes) but unwrap anyway
        for tod, line in entries:
            t = clock(tod)
            if origin is None:
                origin = t
            m = _GOT.match(line)
            if m:
                got.append((t - origin, m.group(4), m.group(6), m.group(7), int(m.group(8)), int(m.group(9)),
                            int(m.group(10))))
    else:
        run.notes.append("logs/ missing: no completion over time")
    out: dict[str, Any] = {}
    filesets = sorted(set(versions) | set(topo.filesets if topo else ()))
    for fs in filesets:
        files = versions.get(fs, {})
        newest: dict[str, tuple[int, int]] = {}
        for (fid, v), size in files.items():
            if fid not in newest or v > newest[fid][0]:
                newest[fid] = (v, size)
        total = sum(size for _, size in newest.values())
        slaves = [s for s in (topo.slaves_of_fileset(fs) if topo else ())
                  if not topo or s not in topo.generator_slaves(fs)]
        held: dict[str, dict[str, dict[int, int]]] = {s: defaultdict(dict) for s in slaves}
        done_at: dict[str, float] = {}
        curve: list[tuple[float, int, float]] = [(0.0, 0, 0.0)]
        frac: dict[str, float] = dict.fromkeys(slaves, 0.0)
        per_slave: dict[str, list[tuple[float, float]]] = {s: [(0.0, 0.0)] for s in slaves}
        for t, slave, gfs, fid, v, block, size in got:
            if gfs != fs or slave not in held or fid not in newest or newest[fid][0] != v:
                continue
            held[slave][fid][block] = size
            h = sum(min(sum(held[slave][f].values()), newest[f][1]) for f in newest)
            frac[slave] = h / total if total else 1.0
            per_slave[slave].append((round(t, 3), round(frac[slave], 4)))
            if slave not in done_at and total and h >= total:
                done_at[slave] = t
            curve.append((round(t, 3), len(done_at), round(sum(frac.values()) / max(1, len(slaves)), 4)))
        out[fs] = {
            "priority": topo.filesets[fs].priority if topo and fs in topo.filesets else None,
            "files": len(newest),
            "versions": len(files),
            "bytes": total,
            "slaves": len(slaves),
            "complete": len(done_at),
            "completion_s": comp_s.get(fs),
            "last_slave_s": round(max(done_at.values()), 3) if done_at else None,
            "curve": curve,
            "per_slave": per_slave,
        }
    return out


def _settings(run: Run) -> dict[str, Any]:
    s = run.summary
    topo = run.topology
    return {
        "topology": s.get("topology"),
        "topology_name": s.get("topology_name", topo.name if topo else None),
        "scenario": s.get("scenario"),
        "scale": s.get("scale"),
        "block_size": s.get("block_size", topo.block_size if topo else None),
        "epoch_s": topo.epoch if topo else None,
        "mode": s.get("mode"),
        "latency": s.get("latency"),
        "latency_method": s.get("latency_method"),
        "completed": s.get("completed"),
        "slaves": s.get("slaves"),
        "files_verified": s.get("files_verified"),
        "files_mismatched": s.get("files_mismatched"),
        "seconds": s.get("seconds"),
        "error": s.get("error"),
        "versions": s.get("versions", {}),
    }
