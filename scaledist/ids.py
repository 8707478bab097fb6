"""Identifiers that touch disk: fileset ids, file ids and versions.

File ids arrive in network messages and become file names, so every one is
checked here before it is joined to a path: a file id must never name
anything outside the data directory (no separators, no "..", no hidden
names, no absolute paths), and the joined path is re-checked after
resolving symlinks.
"""

from __future__ import annotations

import re
from pathlib import Path

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A path component built from an id plus a storage suffix ("File001@3.data").
# '@' is deliberately not allowed in ids, so "<id>@<version>.<ext>" parses unambiguously.
_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$")

MAX_VERSION = 2**63 - 1
ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'"


class BadId(ValueError):
    """An identifier that could name something outside the data directory, or is malformed."""


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe identifier, else raise :class:`BadId` naming the rule."""
    if not isinstance(value, str):
        raise BadId(f"{what} {value!r} is not allowed: must be a string ({ID_RULE})")
    if not ID_RE.fullmatch(value) or ".." in value:
        raise BadId(f"{what} {value!r} is not allowed: {ID_RULE}")
    return value


def check_version(value: object, what: str = "version") -> int:
    """Return ``value`` if it is a non-negative int that fits the on-disk formats."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadId(f"{what} {value!r} is not allowed: must be an integer")
    if not 0 <= value <= MAX_VERSION:
        raise BadId(f"{what} {value!r} is not allowed: must be in 0..{MAX_VERSION}")
    return value


def safe_join(root: Path, *parts: str) -> Path:
    """Join validated single components under ``root``; the resolved result must stay inside ``root``.

    Each part must be one plain name (an id, optionally with an ``@version.ext``
    suffix). The resolve step also catches a symlink planted inside the data
    directory that points elsewhere.
    """
    if not parts:
        raise BadId("safe_join needs at least one path part")
    for part in parts:
        if not isinstance(part, str) or not _PART_RE.fullmatch(part) or ".." in part:
            raise BadId(f"path part {part!r} is not allowed: {ID_RULE}")
    base = Path(root).resolve()
    candidate = base.joinpath(*parts).resolve()
    if candidate == base or not candidate.is_relative_to(base):
        raise BadId(f"path {'/'.join(parts)!r} escapes the data directory {str(base)!r}")
    return candidate
