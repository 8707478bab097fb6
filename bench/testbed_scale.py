"""How many slave daemons one machine holds in an emulated run: CPU seconds and peak RSS per daemon kind.

Runs `scaledist-testbed run` on a FIG. 1-shaped topology with many slaves (default
topologies/patent-fig1-128.yaml, 128 slaves) and prints the daemons' figures from its summary.json.
Needs root and Mininet. Run: .venv/bin/python bench/testbed_scale.py [TOPOLOGY]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    topo = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "topologies" / "patent-fig1-128.yaml")
    if os.geteuid() != 0:
        print("bench/testbed_scale.py needs root (network namespaces); run it with sudo", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "testbed.cli", "run", topo, "--scenario",
               str(ROOT / "topologies" / "scale-scenario.yaml"), "--run-dir", str(Path(tmp) / "run"), "--json",
               "--timeout", "900"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = r.stdout.strip().splitlines()
        if not lines:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        s = json.loads(lines[-1])
    print(f"topology {s['topology']}: {s['slaves']} slaves, completed={s['completed']}, "
          f"{s['files_verified']} files verified, {s['files_mismatched']} mismatched, "
          f"completion {s['completion_s'].get('overall')} s")
    for kind, d in sorted(s["daemons"].items()):
        if not isinstance(d, dict):
            continue
        print(f"  {kind:10s} count={d.get('count')} cpu_s={d.get('cpu_s')} cpu_pct={d.get('cpu_pct')} "
              f"peak_rss_mb={d.get('peak_rss_mb')} sum_peak_rss_mb={d.get('sum_peak_rss_mb')}")
    slaves = s["daemons"].get("slave", {})
    print(f"testbed_slaves={s['slaves']} completed={s['completed']} "
          f"slave_peak_rss_mb={slaves.get('peak_rss_mb')} slave_cpu_s={slaves.get('cpu_s')}")
    return 0 if s["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
