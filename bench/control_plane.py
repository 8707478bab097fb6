"""Control-plane figures: resource manager reservations/s, master decisions/s, idle slave RSS.

Prints figures; asserts nothing (targets: >= 20,000 reservations/s, >= 5,000
decisions/s at 10,000 slaves, <= 40 MB RSS per idle slave daemon).
Run: .venv/bin/python bench/control_plane.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_master import bench_decisions  # noqa: E402
from bench_rm import bench_reservations  # noqa: E402

from scaledist.local import LocalCluster  # noqa: E402


def idle_slave_rss_mb(settle: float = 3.0) -> float:
    """Peak RSS among idle slave daemons of topologies/small.yaml, after they have reported to their master."""
    with tempfile.TemporaryDirectory() as tmp:
        lc = LocalCluster(ROOT / "topologies" / "small.yaml", run_dir=Path(tmp) / "run", log=lambda s: None)
        try:
            topo = lc.topology
            lc.start_servers()
            time.sleep(settle)
            rss = [psutil.Process(lc.procs[s].pid).memory_info().rss for s in topo.slaves]
        finally:
            lc.close()
    return max(rss) / 2**20


def main() -> None:
    rm = bench_reservations(3.0)
    print(f"resource manager: {rm:,.0f} reservations/s (ranked lists of 5, paths of 3-7 links)")
    m1k = bench_decisions(1_000, 3.0)
    print(f"master, 1,000 slaves: {m1k:,.0f} decisions/s")
    m10k = bench_decisions(10_000, 3.0)
    print(f"master, 10,000 slaves: {m10k:,.0f} decisions/s")
    rss = idle_slave_rss_mb()
    print(f"idle slave daemon: {rss:.1f} MB RSS")
    print(f"rm_reservations_per_s={rm:.0f} master_decisions_per_s_10k={m10k:.0f} slave_rss_mb={rss:.1f}")


if __name__ == "__main__":
    main()
