"""PNG plots of one analysed run (matplotlib, Agg backend: no display needed).

Each function takes the dict ``results.analyse.analyse`` returns and a folder, writes one or more PNG
files there and returns their paths, so the report links exactly what exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.patches import FancyArrowPatch
from matplotlib.ticker import MaxNLocator

MAX_SHARE_PLOTS = 12  # contended links plotted (trunks first); the table in summary.json lists all


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def trunk_plots(a: Mapping[str, Any], out: Path) -> list[Path]:
    """Per trunk: reserved (bars) and measured (line) bytes per epoch against the budget x epoch."""
    paths = []
    for tid, s in a["trunk_series"].items():
        tr = a["trunks"][tid]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        eps = s["epochs"]
        if eps:
            ax.bar(eps, [r / 1e6 for r in s["reserved"]], width=0.8, color="#9ecae1", label="reserved (ledger)")
            pts = [(e, m / 1e6) for e, m in zip(eps, s["measured"], strict=True) if m is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#d62728", marker=".", lw=1.2,
                        label="measured (interface bytes)")
        ax.axhline(s["budget_per_epoch"] / 1e6, color="black", ls="--", lw=1, label="budget x epoch")
        if abs(s["physical_per_epoch"] - s["budget_per_epoch"]) > 1e-6 * s["budget_per_epoch"]:
            ax.axhline(s["physical_per_epoch"] / 1e6, color="grey", ls=":", lw=1, label="physical x epoch")
        ax.set_xlabel(f"epoch ({a['epoch_s']:g} s)")
        ax.set_ylabel("MB per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"trunk {tid} ({tr['from']} -> {tr['to']}): {tr['verdict']}")
        ax.legend(fontsize=7, loc="upper right")
        if not eps:
            ax.text(0.5, 0.5, "nothing reserved or measured", transform=ax.transAxes, ha="center")
        paths.append(_save(fig, out / f"trunk_{safe(tid)}.png"))
    return paths


def completion_plots(a: Mapping[str, Any], out: Path) -> list[Path]:
    """Per fileset: each slave's share of the fileset held (thin) and the share of slaves complete (thick)."""
    paths = []
    for fs, c in a["completion"].items():
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for pts in c["per_slave"].values():
            if len(pts) > 1:
                ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#9ecae1", lw=0.7)
        curve = c["curve"]
        n = max(1, c["slaves"])
        ax.step([p[0] for p in curve], [p[1] / n for p in curve], where="post", color="#08519c", lw=2,
                label=f"slaves complete ({c['complete']}/{c['slaves']})")
        if c.get("completion_s"):
            ax.axvline(c["completion_s"], color="grey", ls=":", lw=1, label="testbed: fileset complete")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("seconds since the first daemon log line")
        ax.set_ylabel("fraction")
        ax.set_title(f"fileset {fs} ({c.get('priority') or '?'}): {c['files']} files, {c['bytes'] / 1e6:.2f} MB")
        ax.legend(fontsize=7, loc="lower right")
        if len(curve) <= 1:
            ax.text(0.5, 0.5, "no copies in the slaves' logs", transform=ax.transAxes, ha="center")
        paths.append(_save(fig, out / f"completion_{safe(fs)}.png"))
    return paths


def share_plots(a: Mapping[str, Any], out: Path) -> list[Path]:
    """Per contended link: each priority's share per epoch (solid) and its weight share (dashed)."""
    paths = []
    links = sorted(a["share_series"], key=lambda lk: (not lk.startswith("trunk/"), lk))[:MAX_SHARE_PLOTS]
    cmap = colormaps["tab10"]
    for link in links:
        s = a["share_series"][link]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for i, p in enumerate(s["measured"]):
            ax.plot(s["epochs"], s["measured"][p], color=cmap(i), marker=".", lw=1.2, label=f"{p} {s['basis']}")
            ax.plot(s["epochs"], s["weight"][p], color=cmap(i), ls="--", lw=1, label=f"{p} weight")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel(f"epoch ({a['epoch_s']:g} s)")
        ax.set_ylabel("share of the link's bytes")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{link}: priority shares ({s['basis']})")
        ax.legend(fontsize=7, loc="upper right", ncol=2)
        paths.append(_save(fig, out / f"shares_{safe(link)}.png"))
    return paths


def topology_map(a: Mapping[str, Any], out: Path, topology: Any) -> Path:
    """Datacenters on a circle, trunks as arrows (primary direction) coloured by their busiest epoch."""
    fig, ax = plt.subplots(figsize=(6, 5))
    dcs = sorted(topology.datacenters) if topology is not None else sorted(
        {t["from"] for t in a["trunks"].values()} | {t["to"] for t in a["trunks"].values()})
    pos = {}
    for i, dc in enumerate(dcs):
        ang = math.pi / 2 - 2 * math.pi * i / max(1, len(dcs))
        pos[dc] = (math.cos(ang), math.sin(ang))
    norm = Normalize(vmin=0.0, vmax=1.2)
    cmap = colormaps["RdYlGn_r"]
    for dc, (x, y) in pos.items():
        ax.scatter([x], [y], s=1400, color="#deebf7", edgecolor="#08519c", zorder=3)
        ax.text(x, y, dc, ha="center", va="center", fontsize=9, zorder=4)
    for tid, tr in a["trunks"].items():
        if tr["from"] not in pos or tr["to"] not in pos:
            continue
        u = tr.get("max_epoch_utilisation")
        color = "#aaaaaa" if u is None else cmap(norm(u))
        arrow = FancyArrowPatch(pos[tr["from"]], pos[tr["to"]], arrowstyle="-|>", mutation_scale=18,
                                connectionstyle="arc3,rad=0.18", color=color, lw=3, shrinkA=24, shrinkB=24,
                                zorder=2)
        ax.add_patch(arrow)
        (x0, y0), (x1, y1) = pos[tr["from"]], pos[tr["to"]]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        nx, ny = y1 - y0, -(x1 - x0)  # arc3 bends towards (dy, -dx): its middle is at mid + rad/2 x that
        label = f"{tid} {'?' if u is None else f'{u:.0%}'} {tr['verdict']}"
        ax.text(mx + 0.09 * nx, my + 0.09 * ny, label, fontsize=7, ha="center", va="center",
                bbox={"boxstyle": "round", "fc": "white", "lw": 1.5,
                      "ec": {"PASS": "#2ca02c", "FAIL": "#d62728"}.get(tr["verdict"], "#888888")})
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.04, label="peak epoch utilisation (measured / budget)")
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("trunks by peak utilisation")
    return _save(fig, out / "map.png")


def all_plots(a: Mapping[str, Any], out: Path, topology: Any) -> dict[str, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    return {
        "map": [topology_map(a, out, topology)],
        "trunks": trunk_plots(a, out),
        "shares": share_plots(a, out),
        "completion": completion_plots(a, out),
    }


def overlay_plots(runs: list[tuple[str, Mapping[str, Any]]], out: Path) -> list[Path]:
    """Two (or more) runs on one set of axes: per trunk measured (or reserved) MB per epoch, per fileset
    the share of slaves complete over time."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    styles = ["-", "--", ":", "-."]
    trunks = sorted(set().union(*(r["trunk_series"] for _, r in runs)))
    for tid in trunks:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for i, (name, r) in enumerate(runs):
            s = r["trunk_series"].get(tid)
            if not s or not s["epochs"]:
                continue
            e0 = s["epochs"][0]
            meas = [(e - e0, m / 1e6) for e, m in zip(s["epochs"], s["measured"], strict=True) if m is not None]
            if meas:
                ax.plot([p[0] for p in meas], [p[1] for p in meas], ls=styles[i % 4], marker=".", lw=1.2,
                        label=f"{name} measured")
            ax.plot([e - e0 for e in s["epochs"]], [v / 1e6 for v in s["reserved"]], ls=styles[i % 4], lw=0.8,
                    alpha=0.6, label=f"{name} reserved")
            ax.axhline(s["budget_per_epoch"] / 1e6, ls=styles[i % 4], color="black", lw=0.6)
        ax.set_xlabel("epoch since the trunk's first")
        ax.set_ylabel("MB per epoch")
        ax.set_title(f"trunk {tid}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"trunk_{safe(tid)}.png"))
    filesets = sorted(set().union(*(r["completion"] for _, r in runs)))
    for fs in filesets:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for i, (name, r) in enumerate(runs):
            c = r["completion"].get(fs)
            if not c:
                continue
            n = max(1, c["slaves"])
            ax.step([p[0] for p in c["curve"]], [p[1] / n for p in c["curve"]], where="post", ls=styles[i % 4],
                    lw=1.5, label=f"{name}")
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("seconds")
        ax.set_ylabel("slaves complete")
        ax.set_title(f"fileset {fs}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"completion_{safe(fs)}.png"))
    return paths
