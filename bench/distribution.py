"""ScaleDist against BitTorrent and central pull on the same emulated network (a thin wrapper).

`.venv/bin/python bench/distribution.py [TOPOLOGY] [--scenario FILE] [...]` is
`scaledist-testbed bench` with the default topology and scenario; it ends with one line
`scaledist_vs_bound=X scaledist_vs_bittorrent=Y scaledist_vs_central=Z`.  Needs root and Mininet.
"""

from __future__ import annotations

import sys

from testbed.cli import main

DEFAULT = ["topologies/patent-fig1.yaml", "--scenario", "topologies/default-scenario.yaml"]

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        args = [DEFAULT[0], *(DEFAULT[1:] if "--scenario" not in args else []), *args]
    sys.exit(main(["bench", *args]))
