"""results/: verdicts, efficiency, shares, CSVs, plots and report.html from synthetic run folders.

The reservations are real: a ``ResourceManager`` (the very core the daemon runs) is driven through grants,
carries and releases by a small event loop, and its ledger is written as the daemon writes it.  Only the
measurement is synthetic: an honest link carries exactly what was reserved each epoch; a link whose
resource manager was told twice what it carries drains the reserved bytes at half the rate, so the rest
spills into later epochs and the queue overflows (drops).
"""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from results.analyse import analyse
from results.report import write_report
from scaledist.core.ledger import encode_jsonl, read_ledger, reserved_bytes
from scaledist.core.resource_manager import ResourceManager
from scaledist.messages import CopyRequest, Grant
from scaledist.topology_schema import load_topology

MiB = 2**20

TOPOLOGY = """\
version: 1
name: synth
block_size: 1MiB
epoch: 1s
report_interval: 2s
control: management
priorities:
  - {{name: P1, weight: 1}}
  - {{name: P2, weight: 2}}
  - {{name: P3, weight: 3}}
  - {{name: P4, weight: 4}}
defaults:
  slave: {{inbound: 40MB/s, outbound: 40MB/s}}
  rack: {{inbound: 100MB/s, outbound: 100MB/s}}
  datacenter: {{inbound: 100MB/s, outbound: 100MB/s}}
datacenters:
  - id: DC1
    racks:
      - id: R1
        slaves:
          - {{count: 2, prefix: a-s, filesets: [news, web]}}
  - id: DC2
    racks:
      - id: R2
        slaves:
          - {{count: 2, prefix: b-s, filesets: [news, web]}}
  - id: DC3
    racks:
      - id: R3
        slaves:
          - {{count: 1, prefix: c-s, filesets: [news]}}
trunks:
  - {{id: T1, from: DC1, to: DC2, bandwidth: 10MB/s, reverse_bandwidth: 2MB/s, latency: 10ms}}
  - {{id: T2, from: DC1, to: DC3, bandwidth: {t2_bw}, {t2_budget}reverse_bandwidth: 2MB/s, latency: 10ms}}
resource_manager: {{id: rm, rack: R1}}
masters:
  - {{id: M1, rack: R1, filesets: [news, web]}}
generators:
  - {{id: G1, slave: a-s1, filesets: [news, web]}}
filesets:
  - {{id: news, priority: P3}}
  - {{id: web, priority: P2}}
"""

# news: a@1 2 MiB, b@1 1 MiB, a@2 3 MiB (an update) -> 6 MiB, needed in DC2 and DC3;  web: 1 MiB, DC2 only.
SCENARIO = """\
version: 1
name: synth
filesets:
  news:
    files:
      - {id: news-a, size: 2MiB}
      - {id: news-b, size: 1MiB}
    updates:
      - {at: 1s, file: news-a, size: 3MiB}
  web:
    files:
      - {id: web-w, size: 1MiB}
"""
NEEDED = 2 * 6 * MiB + 1 * MiB


def drive_rm(topo, copies: list[tuple[str, str, str, str, int, int]], start: float = 0.0):
    """Copies (fileset, file, source, destination, version, blocks) one block at a time: each block is requested,
    runs at its granted rate, then released; a denied block is retried 50 ms later.  Returns the ledger."""
    rm = ResourceManager(topo, start=start)
    pending = [(fs, fid, src, dst, v, b) for fs, fid, src, dst, v, n in copies for b in range(n)]
    active: dict[str, tuple[float, str]] = {}  # transfer id -> (finish time, destination)
    busy: set[str] = set()  # one block at a time per destination
    now, seq = start, 0
    ledger = []
    while pending or active:
        for tid, (fin, dst) in list(active.items()):
            if fin <= now:
                rm.release(now, tid)
                del active[tid]
                busy.discard(dst)
        rest = []
        for fs, fid, src, dst, v, b in pending:
            if dst in busy:
                rest.append((fs, fid, src, dst, v, b))
                continue
            seq += 1
            req = CopyRequest(f"M1.t.{seq}", "M1", dst, (src,), fs, fid, v, b, MiB)
            d = rm.request(now, req)
            if isinstance(d, Grant):
                active[req.transfer_id] = (now + MiB / d.rate, dst)
                busy.add(dst)
            else:
                rest.append((fs, fid, src, dst, v, b))
        pending = rest
        now += 0.05
        rm.tick(now)
        ledger.extend(rm.take_ledger())
        assert now < start + 120, "the synthetic distribution did not finish"
    rm.tick(now + 5)
    ledger.extend(rm.take_ledger())
    return ledger


def frames(payload: int) -> dict[str, int]:
    """Interface counters for ``payload`` bytes sent in full-size TCP segments (1448 B + 66 B of headers)."""
    n = -(-payload // 1448)
    return {"bytes": payload + 66 * n, "packets": n}


def make_run(tmp: Path, *, t2_carries: float | None = None, t2_budget: str = "", flows: bool = False,
             logs: bool = True, t2_extra: int = 0) -> Path:
    """A run folder; T2 carries ``t2_carries`` bytes/s (None: exactly what was reserved); ``t2_extra`` more
    3-block copies into DC3 keep T2 busy for longer."""
    tdir = tmp / "run"
    tdir.mkdir()
    (tmp / "topo.yaml").write_text(TOPOLOGY.format(t2_bw="10MB/s" if not t2_budget else "5MB/s",
                                                   t2_budget=f"budget: {t2_budget}, " if t2_budget else ""))
    (tmp / "scenario.yaml").write_text(SCENARIO)
    topo = load_topology(tmp / "topo.yaml")
    copies = [("news", "news-a", "a-s1", "b-s1", 1, 2), ("news", "news-b", "a-s1", "b-s1", 1, 1),
              ("news", "news-a", "a-s1", "b-s1", 2, 3), ("web", "web-w", "a-s1", "b-s2", 1, 1),
              ("news", "news-a", "a-s1", "c-s1", 1, 2), ("news", "news-b", "a-s1", "c-s1", 1, 1),
              ("news", "news-a", "a-s1", "c-s1", 2, 3),
              # inside DC2: from the copy there, no trunk
              ("news", "news-a", "b-s1", "b-s2", 2, 3), ("news", "news-b", "b-s1", "b-s2", 1, 1)]
    # more web, so news (P3) and web (P2) contend on T1 for several epochs
    copies += [("web", "web-w", "a-s2", "b-s2", 1, 1)] * 6
    copies += [("news", "news-a", "a-s2", "c-s1", 2, 3)] * t2_extra
    ledger = drive_rm(topo, copies)
    (tdir / "ledger.jsonl").write_bytes(encode_jsonl(ledger))
    reserved = reserved_bytes(ledger)
    last = max(e for e, _ in reserved)
    queue = 0.0
    with (tdir / "epochs.jsonl").open("w") as f:
        for e in range(last + 4):
            links = {}
            for link in sorted({lk for _, lk in reserved} | {"trunk/T1", "trunk/T2", "trunk/T1/rev"}):
                r = reserved.get((e, link), 0)
                st = {**frames(r), "drops": 0, "overlimits": 0, "backlog": 0}
                if link == "trunk/T2" and t2_carries is not None:
                    queue += r
                    sent = min(queue, t2_carries * 1.0)
                    queue -= sent
                    drops = int(max(0.0, queue - 0.5 * MiB) // 1500)  # a 0.5 MiB buffer overflows (TCP resends)
                    st = {**frames(int(sent)), "drops": drops, "overlimits": drops,
                          "backlog": int(min(queue, 0.5 * MiB))}
                links[link] = st
            f.write(json.dumps({"epoch": e, "epochs": 1, "t_start": float(e), "t_end": e + 1.0, "partial": False,
                                "links": links}) + "\n")
    summary = {"id": "synth-run", "topology": str(tmp / "topo.yaml"), "scenario": str(tmp / "scenario.yaml"),
               "scale": 1.0, "latency_method": "nfqueue", "mode": "pull", "completed": True, "slaves": 5,
               "files_verified": 17, "files_mismatched": 0, "completion_s": {"overall": 9.0, "news": 9.0, "web": 5.0},
               "seconds": 12.0, "daemons": {"all": {"cpu_s": 3.2, "peak_rss_mb": 40}},
               "trunks": {"trunk/T1": {"budget_Bps": 1e7, "bytes": 1, "drops": 0}}, "versions": {"python": "3.11"}}
    (tdir / "summary.json").write_text(json.dumps(summary))
    (tdir / "measurement.json").write_text(json.dumps({"cpu_s": 0.42}))
    if flows:  # as traffic.flows writes it: per trunk the matched flows, bytes and their time span
        fl: dict[str, dict] = {}
        ends = {r.transfer_id: r.t for r in ledger if r.kind == "release"}
        for r in ledger:
            if r.kind in ("grant", "carry") and r.link in ("trunk/T1", "trunk/T2"):
                ent = fl.setdefault(r.link.split("/")[1], {"link": r.link, "flows": {}, "unreserved_bytes": 0,
                                                           "capture_drops": 0, "per_epoch": {}})
                f = ent["flows"].setdefault(r.transfer_id, {"transfer_id": r.transfer_id, "bytes": 0,
                                                            "payload_bytes": 0, "first_t": r.t,
                                                            "last_t": ends[r.transfer_id]})
                f["bytes"] += r.bytes
                f["payload_bytes"] += r.bytes
        (tdir / "flows.json").write_text(json.dumps(
            {"trunks": {t: {**v, "flows": list(v["flows"].values())} for t, v in fl.items()}}))
    if logs:
        (tdir / "logs").mkdir()
        lines = {"b-s1": [], "b-s2": [], "c-s1": []}
        t = 0.0
        for fs, fid, src, dst, v, n in copies:
            if src == "a-s2":
                continue
            for b in range(n):
                t += 0.5
                s = f"10:00:{t:06.3f}"
                lines[dst].append(f"{s} slave {dst} got M1.x {fs}/{fid}@{v}#{b} {MiB}B from {src} in 0.1s (10MB/s)")
        for slave, ls in lines.items():
            (tdir / "logs" / f"{slave}.log").write_text("10:00:00.000 slave started\n" + "\n".join(ls) + "\n")
    return tdir


def test_honest_trunks_pass(tmp_path: Path) -> None:
    a = analyse(make_run(tmp_path))
    for tid in ("T1", "T2"):
        t = a["trunks"][tid]
        assert t["verdict"] == "PASS", t
        assert t["epochs_over_budget"] == 0 and t["drops"] == 0
        assert t["measured_payload_bytes"] == t["reserved_bytes"] > 0  # headers taken off the frames' bytes
        assert t["measured_bytes"] > t["reserved_bytes"]
        assert 0 < t["max_epoch_utilisation"] <= 1.0
    assert a["trunks"]["T1"]["budget_bytes_per_s"] == 10e6
    assert a["measurement_cpu_s"] == 0.42


def test_rm_told_twice_what_the_trunk_carries_fails(tmp_path: Path) -> None:
    """The RM believes T2 carries 10 MB/s; it carries 5: reserved bytes spill into later epochs and drop."""
    a = analyse(make_run(tmp_path, t2_carries=5e6, t2_extra=6))
    t2 = a["trunks"]["T2"]
    assert t2["verdict"] == "FAIL"
    assert t2["epochs_over_budget"] >= 1
    assert "epochs carried more than reserved" in t2["reason"]
    assert t2["drops"] > 0 and "dropped" in t2["reason"]
    assert a["trunks"]["T1"]["verdict"] == "PASS"


def test_declared_budget_beyond_physical_fails(tmp_path: Path) -> None:
    """budget 10MB/s on a 5MB/s trunk: the report names the reservations the link cannot carry."""
    a = analyse(make_run(tmp_path, t2_carries=5e6, t2_budget="10MB/s"))
    t2 = a["trunks"]["T2"]
    assert t2["budget_bytes_per_s"] == 10e6 and t2["physical_bytes_per_s"] == 5e6
    assert t2["verdict"] == "FAIL" and "beyond the physical rate" in t2["reason"]


def test_trunk_efficiency_hand_checked(tmp_path: Path) -> None:
    """Every block crossed a trunk exactly once per datacenter that needed it: 13 MiB carried, 13 MiB needed."""
    a = analyse(make_run(tmp_path))
    assert a["needed_bytes"] == NEEDED
    assert a["needed_per_datacenter"] == {"DC2": 7 * MiB, "DC3": 6 * MiB}
    # the 6 extra web blocks (a-s2 -> b-s2, a second copy of web-w into DC2) are waste: (13 + 6) / 13
    assert a["trunk_bytes"] == 19 * MiB
    assert a["trunk_efficiency"] == pytest.approx(19 / 13, abs=1e-4)
    assert a["trunk_efficiency_reserved"] == pytest.approx(19 / 13, abs=1e-4)
    assert "epochs.jsonl" in a["trunk_efficiency_basis"]


def test_priority_shares_from_flows_and_from_reservations(tmp_path: Path) -> None:
    a = analyse(make_run(tmp_path, flows=True))
    sh = a["priority_shares"]["trunk/T1"]
    assert sh["basis"] == "flows"
    ps = sh["priorities"]
    assert set(ps) == {"P2", "P3"}
    assert ps["P2"]["weight_share"] == pytest.approx(0.4, abs=0.05)
    assert ps["P2"]["measured_share"] + ps["P3"]["measured_share"] == pytest.approx(1.0)
    assert a["trunk_efficiency_basis"].startswith("TCP payload bytes of the captured flows")
    assert a["trunk_efficiency"] == pytest.approx(19 / 13, abs=1e-4)
    assert a["trunks"]["T1"]["flows"] > 0
    (tmp_path / "x").mkdir()
    b = analyse(make_run(tmp_path / "x"))
    assert b["priority_shares"]["trunk/T1"]["basis"] == "reserved"


def test_completion_from_the_slaves_logs(tmp_path: Path) -> None:
    a = analyse(make_run(tmp_path))
    news = a["completion"]["news"]
    assert news["slaves"] == 4 and news["files"] == 2 and news["versions"] == 3  # a-s2 holds it but copies none
    assert news["complete"] == 3 and news["bytes"] == 4 * MiB  # newest: news-a@2 3 MiB + news-b 1 MiB
    assert news["completion_s"] == 9.0
    assert a["completion"]["web"]["complete"] == 1


def test_report_files_and_html(tmp_path: Path) -> None:
    rdir = make_run(tmp_path, t2_carries=5e6, t2_extra=6)
    a = write_report(rdir)
    s = json.loads((rdir / "summary.json").read_text())
    assert s["latency_method"] == "nfqueue" and s["files_verified"] == 17  # the testbed's fields stay
    assert s["trunk_directions"]["trunk/T1"]["budget_Bps"] == 1e7  # ... its per-direction trunks moved aside
    assert {t: v["verdict"] for t, v in s["trunks"].items()} == {"T1": "PASS", "T2": "FAIL"}
    for k in ("budget_bytes_per_s", "reserved_bytes", "measured_bytes", "max_epoch_utilisation",
              "epochs_over_budget", "drops", "flows", "reason"):
        assert k in s["trunks"]["T2"]
    assert s["trunk_efficiency"] and s["priority_shares"] and s["measurement_cpu_s"] == 0.42
    with (rdir / "epochs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(a["epochs"]) > 0
    pairs = {(r["epoch"], r["link"]) for r in rows}
    assert len(pairs) == len(rows)  # one row per link direction per epoch
    ledger_pairs = {(str(e), lk) for e, lk in reserved_bytes(read_ledger(rdir / "ledger.jsonl"))}
    assert ledger_pairs <= pairs
    with (rdir / "links.csv").open() as f:
        links = list(csv.DictReader(f))
    assert len(links) == len(a["links"]) and {r["verdict"] for r in links if r["link"] == "trunk/T2"} == {"FAIL"}
    pngs = sorted((rdir / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"map.png", "trunk_T1.png", "trunk_T2.png", "completion_news.png", "completion_web.png",
            "shares_trunk_T1.png"} <= names
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert set(a["plots"]) == {str(p) for p in pngs}

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.imgs: list[str] = []
            self.h2: list[str] = []
            self._cell: list[str] | None = None
            self._tag = ""

        def handle_starttag(self, tag, attrs):
            self._tag = tag
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self._cell = []
            elif tag == "img":
                self.imgs.append(dict(attrs)["src"])

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self._cell is not None:
                self.tables[-1][-1].append("".join(self._cell).strip())
                self._cell = None

        def handle_data(self, data):
            if self._cell is not None:
                self._cell.append(data)
            elif self._tag == "h2":
                self.h2.append(data)

    p = Cells()
    p.feed((rdir / "report.html").read_text())
    p.close()
    assert p.h2[0] == "Trunk budgets" and p.h2.index("Plots") < p.h2.index("Filesets") < p.h2.index("Settings")
    first = p.tables[0]
    assert first[0][0] == "trunk" and "verdict" in first[0]
    v = first[0].index("verdict")
    verdicts = {row[0]: (row[v], row[v + 1]) for row in first[1:]}
    assert verdicts["T1"][0] == "PASS" and verdicts["T2"][0] == "FAIL" and "dropped" in verdicts["T2"][1]
    assert all((rdir / src).is_file() for src in p.imgs) and len(p.imgs) == len(pngs)

    again = write_report(rdir)  # regenerating keeps everything (the testbed's trunks are not lost)
    s2 = json.loads((rdir / "summary.json").read_text())
    assert s2["trunk_directions"] == s["trunk_directions"] and again["trunks"] == a["trunks"]


def test_missing_measurement_degrades_with_notes(tmp_path: Path) -> None:
    rdir = make_run(tmp_path, logs=False)
    (rdir / "epochs.jsonl").unlink()
    (rdir / "measurement.json").unlink()
    a = write_report(rdir)
    assert a["trunks"]["T1"]["verdict"] == "PASS" and "coarse" in a["trunks"]["T1"]["reason"]
    assert a["trunks"]["T2"]["verdict"] == "UNMEASURED"
    assert any("epochs.jsonl missing" in n for n in a["notes"])
    html = (rdir / "report.html").read_text()
    assert "epochs.jsonl missing" in html and "logs/ missing" in html
    assert (rdir / "plots" / "map.png").stat().st_size > 0


def test_cli_report_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra = make_run(tmp_path / "a")
    rb = make_run(tmp_path / "b", t2_carries=5e6, t2_extra=6)
    assert main(["report", str(rb)]) == 0
    out = capsys.readouterr().out
    assert "T1 PASS" in out and "T2 FAIL" in out and (rb / "report.html").is_file()
    assert main(["compare", str(ra), str(rb), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("T2 verdict"))
    assert line.split()[-2:] == ["PASS", "FAIL"]
    pngs = list((tmp_path / "cmp").glob("*.png"))
    assert {p.name for p in pngs} >= {"trunk_T1.png", "trunk_T2.png", "completion_news.png"}
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
