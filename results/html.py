"""``report.html``: what a network engineer reads first, in that order.

1. the trunk-budget table (PASS/FAIL per trunk and why), trunk efficiency, priority shares;
2. the plots (map, per trunk, per contended link);
3. per-fileset completion (table and plots);
4. the run's settings and versions, and every note about missing inputs.

One file, no scripts, no external resources; plots are PNGs referenced by relative path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}th,td{border:1px solid #bbb;padding:3px 7px;font-size:13px}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.PASS{background:#d9f2d9;font-weight:bold}td.FAIL{background:#f8d0d0;font-weight:bold}
td.UNMEASURED{background:#eee}.note{color:#8a4b00}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
"""


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    if x is None:
        return "&ndash;"
    try:
        return escape(fmt.format(x))
    except (ValueError, TypeError):
        return escape(str(x))


def _mb(x: Any) -> str:
    return "&ndash;" if x is None else f"{x / 1e6:,.3f}"


def _pct(x: Any) -> str:
    return "&ndash;" if x is None else f"{100 * x:.1f} %"


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def td(x: str, cls: str = "") -> str:
    return f'<td class="{cls}">{x}</td>' if cls else f"<td>{x}</td>"


def render(a: Mapping[str, Any], plots: Mapping[str, list[Path]], base: Path) -> str:
    """The report as one HTML string; ``plots`` paths are made relative to ``base`` (the run folder)."""

    def img(p: Path) -> str:
        rel = p.relative_to(base) if p.is_absolute() and base in p.parents else p
        return f'<img src="{escape(str(rel))}" alt="{escape(p.stem)}">'

    s = a["settings"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ScaleDist run {escape(str(a['id']))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>ScaleDist run {escape(str(a['id']))}</h1>",
             f"<p>{escape(str(s.get('topology_name')))}, scale {escape(str(s.get('scale')))}, latency by "
             f"{escape(str(s.get('latency_method')))}; run {'completed' if s.get('completed') else 'INCOMPLETE'}: "
             f"{_num(s.get('files_verified'))} files verified, {_num(s.get('files_mismatched'))} mismatched, "
             f"{_num(s.get('seconds'), '{:.1f}')} s.</p>"]

    drill = base / "drill.json"
    if drill.is_file():  # a failure-injection drill's run: its verdict and timeline first
        parts.append(drill_section(drill))

    # 1. trunk budgets
    parts.append("<h2 id='trunks'>Trunk budgets</h2>")
    rows = []
    for tid, t in a["trunks"].items():
        rows.append([
            td(escape(tid)), td(f"{escape(t['from'])} &rarr; {escape(t['to'])}"),
            td(_mb(t["budget_bytes_per_s"]), "num"), td(_mb(t["reserved_bytes"]), "num"),
            td(_mb(t["measured_bytes"]), "num"), td(_pct(t["max_epoch_utilisation"]), "num"),
            td(_num(t["epochs_over_budget"]), "num"), td(_num(t["drops"]), "num"), td(_num(t["flows"]), "num"),
            td(escape(t["verdict"]), t["verdict"]), td(escape(t["reason"])),
        ])
    parts.append(_table(["trunk", "direction", "budget MB/s", "reserved MB", "measured MB", "busiest epoch",
                         "epochs over", "drops", "flows", "verdict", "reason"], rows, "trunks"))
    parts.append(f"<p>Rule: {escape(a['rules']['text'])}.</p>")
    parts.append(f"<p><b>Trunk efficiency</b> {_num(a.get('trunk_efficiency'), '{:.3f}')} "
                 f"(1.0 = one copy into each datacenter; {_mb(a.get('trunk_bytes'))} MB carried / "
                 f"{_mb(a.get('needed_bytes'))} MB needed; basis: {escape(a.get('trunk_efficiency_basis', ''))}); "
                 f"from reservations {_num(a.get('trunk_efficiency_reserved'), '{:.3f}')}.</p>")
    if a["priority_shares"]:
        def share_rows(links: list[str]) -> list[list[str]]:
            rows = []
            for link in links:
                ps = a["priority_shares"][link]
                for p, v in ps["priorities"].items():
                    rows.append([td(escape(link)), td(escape(ps["basis"])), td(_num(ps["epochs"]), "num"),
                                 td(escape(p)), td(_mb(v["bytes"]), "num"), td(_pct(v["measured_share"]), "num"),
                                 td(_pct(v["weight_share"]), "num"), td(_num(v["diff_pp"], "{:+.1f}"), "num"),
                                 td(_num(ps.get("active_epochs")), "num"),
                                 td(_pct(v.get("active_measured_share")), "num"),
                                 td(_pct(v.get("active_weight_share")), "num"),
                                 td(_num(v.get("active_diff_pp"), "{:+.1f}"), "num")])
            return rows

        head = ["link", "basis", "epochs", "priority", "MB", "share", "weight share", "diff pp",
                "epochs both active", "share (active)", "weight share (active)", "diff pp (active)"]
        trunk_links = [lk for lk in a["priority_shares"] if lk.startswith("trunk/")]
        others = [lk for lk in a["priority_shares"] if not lk.startswith("trunk/")]
        parts.append("<h3>Priority shares on contended links</h3>")
        parts.append("<p>Contended: at least two priority pools allocated on the link in an epoch. Weight share: "
                     "among the pools allocated; (active): over epochs where at least two pools carried bytes, "
                     "among those pools.</p>")
        if trunk_links:
            parts.append(_table(head, share_rows(trunk_links)))
        else:
            parts.append("<p>No trunk was contended.</p>")
        if others:
            parts.append(f"<details><summary>{len(others)} other contended links (slave, rack, datacenter; from "
                         f"reserved bytes)</summary>{_table(head, share_rows(others))}</details>")
    else:
        parts.append("<p>No contended link (no epoch with two priority pools on one link).</p>")
    mc = a.get("measurement_cpu_s")
    d = (a.get("daemons") or {}).get("all", {})
    parts.append(f"<p>Measurement CPU: {_num(mc, '{:.2f}')} s; daemons: {_num(d.get('cpu_s'), '{:.1f}')} CPU-s, "
                 f"largest {_num(d.get('peak_rss_mb'), '{:.0f}')} MB.</p>")

    # 2. plots
    parts.append("<h2 id='plots'>Plots</h2>")
    for key in ("map", "trunks", "shares"):
        for p in plots.get(key, []):
            parts.append(img(p))

    # 3. completion
    parts.append("<h2 id='completion'>Filesets</h2>")
    rows = [[td(escape(fs)), td(escape(str(c.get("priority")))), td(_num(c["files"]), "num"),
             td(_num(c["versions"]), "num"), td(_mb(c["bytes"]), "num"), td(f"{c['complete']}/{c['slaves']}", "num"),
             td(_num(c.get("completion_s"), "{:.2f}"), "num"), td(_num(c.get("last_slave_s"), "{:.2f}"), "num")]
            for fs, c in a["completion"].items()]
    parts.append(_table(["fileset", "priority", "files", "versions", "MB (newest)", "slaves complete (logs)",
                         "complete at s (testbed)", "last slave at s (logs)"], rows))
    for p in plots.get("completion", []):
        parts.append(img(p))

    # 4. settings
    parts.append("<h2 id='settings'>Settings</h2>")
    rows = [[td(escape(k)), td(escape(str(v)))] for k, v in s.items() if k != "versions"]
    parts.append(_table(["setting", "value"], rows))
    rows = [[td(escape(k)), td(escape(str(v)))] for k, v in (s.get("versions") or {}).items()]
    if rows:
        parts.append(_table(["component", "version"], rows))
    parts.append("<h3>Inputs</h3><ul>" + "".join(
        f"<li>{escape(k)}: {'present' if v else '<b>missing</b>'}</li>" for k, v in a["inputs"].items()) + "</ul>")
    if a["notes"]:
        parts.append("<ul>" + "".join(f"<li class='note'>{escape(n)}</li>" for n in a["notes"]) + "</ul>")
    parts.append("<p>Files: summary.json, links.csv, epochs.csv, plots/.</p></body></html>")
    return "\n".join(parts)


def drill_section(path: Path) -> str:
    """The drill's verdict and, per fault, when it was injected, noticed, repaired and back (testbed/drill.py)."""
    import json

    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"<h2 id='drill'>Drill</h2><p class='note'>drill.json unreadable: {escape(str(e))}</p>"
    v = str(d.get("verdict", "FAIL"))
    out = [f"<h2 id='drill'>Drill {escape(str(d.get('name')))}</h2>",
           _table(["verdict", "completed", "files mismatched", "corrupt blocks accepted", "bytes re-sent"],
                  [[td(escape(v), v), td(escape(str(d.get("completed")))), td(_num(d.get("files_mismatched")), "num"),
                    td(_num(d.get("corrupt_blocks_accepted")), "num"), td(_num(d.get("bytes_resent")), "num")]])]
    if d.get("reasons"):
        out.append("<ul>" + "".join(f"<li class='note'>{escape(str(r))}</li>" for r in d["reasons"]) + "</ul>")
    rows = []
    for f in d.get("faults", []):
        fv = str(f.get("verdict", ""))
        also = ", ".join(f"{k} +{x:.1f}s" for k, x in (f.get("also_marked_failed") or {}).items())
        def sec(key: str, fmt: str = "{:.1f}", f: dict[str, Any] = f) -> str:
            return td(_num(f.get(key), fmt), "num")

        rows.append([td(escape(str(f.get("name")))), td(escape(str(f.get("trigger")))), sec("injected_s"),
                     sec("first_failure_s"), sec("marked_failed_s"), sec("detect_s"), sec("failures_at_mark", "{}"),
                     sec("repaired_s"), sec("back_after_repair_s", "{:+.1f}"), sec("resumed_after_s", "{:.2f}"),
                     sec("bytes_resent", "{:,.0f}"), td(escape(also)), td(escape(fv), fv),
                     td(escape("; ".join(f.get("problems") or [])))])
    out.append(_table(["fault", "when", "injected s", "first failure s", "marked failed s", "detected after s",
                       "failures", "repaired s", "back after repair s", "resumed after s", "bytes re-sent",
                       "also marked failed", "verdict", "problems"], rows))
    h = d.get("health") or {}
    health = (f"threshold {h.get('failure_threshold')}, recovery {h.get('recovery_threshold')}, decay "
              f"{h.get('decay_percent')} per {h.get('time_unit')} s")
    out.append(f"<p>Times in seconds after the daemons started. Health: {escape(health)}. "
               f"{escape(str(d.get('counting', '')))} Files: drill.json, drill.csv.</p>")
    return "\n".join(out)
