"""Drill faults; importing this package registers every fault kind (``testbed.faults.base.FAULTS``)."""

from __future__ import annotations

from testbed.faults import data, network, process  # noqa: F401  (each module registers its kinds)
