"""Human units in topology and scenario files -> bytes, bytes/s and seconds.

Network engineers write "25MB/s", "200Mbit/s", "64MiB", "100ms"; the core only
ever sees plain numbers in bytes, bytes per second and seconds.
"""

from __future__ import annotations

import math
import re

_NUM = r"\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*"

_SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_RATE_UNITS = {
    "B/S": 1, "KB/S": 10**3, "MB/S": 10**6, "GB/S": 10**9,
    "KIB/S": 2**10, "MIB/S": 2**20, "GIB/S": 2**30,
    "BIT/S": 1 / 8, "KBIT/S": 10**3 / 8, "MBIT/S": 10**6 / 8, "GBIT/S": 10**9 / 8,
    "BPS": 1 / 8, "KBPS": 10**3 / 8, "MBPS": 10**6 / 8, "GBPS": 10**9 / 8,
}
_TIME_UNITS = {"": 1.0, "S": 1.0, "MS": 1e-3, "US": 1e-6, "M": 60.0, "MIN": 60.0, "H": 3600.0}

_RE = re.compile(r"^" + _NUM + r"([A-Za-z/]*)\s*$")


class UnitError(ValueError):
    """A quantity that cannot be read; the message says what was expected."""


def _split(text: str | int | float, what: str) -> tuple[float, str]:
    if isinstance(text, bool):
        raise UnitError(f"expected a {what}, got a boolean")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise UnitError(f"expected a finite {what}, got {text!r}")
        return float(text), ""
    if not isinstance(text, str):
        raise UnitError(f"expected a {what}, got {type(text).__name__}")
    m = _RE.match(text)
    if not m:
        raise UnitError(f"cannot read {text!r} as a {what}")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise UnitError(f"{text!r} is not a finite {what}")
    return value, m.group(2).upper()


def parse_size(text: str | int | float) -> int:
    """Bytes from '64MiB', '10 MB' or a bare number of bytes."""
    value, unit = _split(text, "size such as '64MiB'")
    if unit not in _SIZE_UNITS:
        raise UnitError(f"unknown size unit {unit!r} in {text!r} (use B, KB, MB, GB, KiB, MiB, GiB)")
    return round(value * _SIZE_UNITS[unit])


def parse_rate(text: str | int | float) -> float:
    """Bytes per second from '100MB/s', '800Mbit/s' or a bare number of MB/s (the patent's unit)."""
    value, unit = _split(text, "bandwidth such as '100MB/s' or '800Mbit/s'")
    if unit == "":
        return value * 10**6
    if unit not in _RATE_UNITS:
        raise UnitError(f"unknown bandwidth unit {unit!r} in {text!r} (use MB/s, Mbit/s, GB/s, ...)")
    return value * _RATE_UNITS[unit]


def parse_duration(text: str | int | float) -> float:
    """Seconds from '100ms', '2s', '1min' or a bare number of seconds."""
    value, unit = _split(text, "duration such as '100ms' or '2s'")
    if unit not in _TIME_UNITS:
        raise UnitError(f"unknown time unit {unit!r} in {text!r} (use us, ms, s, min, h)")
    return value * _TIME_UNITS[unit]


def fmt_rate(bps: float) -> str:
    """Bytes/s in the patent's MB/s, for tables and logs."""
    return f"{bps / 1e6:.3f}MB/s"


def fmt_size(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}B"
