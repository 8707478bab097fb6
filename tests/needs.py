"""Why a test cannot run here (None when it can): the one skip reason for emulation tests."""

from __future__ import annotations

import importlib
import os


def why_no_testbed(*extra: str) -> str | None:
    """Root and Mininet (plus ``extra`` modules, e.g. ``netfilterqueue``), or the reason and the fix."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, iptables): run as root, e.g. in CI"
    for name in ("mininet.net", *extra):
        try:
            importlib.import_module(name)
        except ImportError as e:
            return f"needs {name.split('.')[0]} (bash scripts/setup.sh installs it; use .venv/bin/python): {e}"
    return None
