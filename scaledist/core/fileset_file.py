"""The FileSet file (§0057-0059, FIG. 3B): which (FileID, Version) a slave needs.

It is distributed like any other file (its file id is the fileset id) and
its content decides what a slave asks for next, so a malformed one must be
refused with a clear reason rather than half-applied. Following the first
embodiment of §0059 it does not list itself: its row in the slave state is
implicit and always wants the newest version (§0093).

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from scaledist.ids import BadId, check_id, check_version

FORMAT = "scaledist-fileset"
FORMAT_VERSION = 1
MAX_FILES = 10_000
MAX_BYTES = 1 << 20  # 1 MiB

_TOP_KEYS = frozenset({"format", "v", "fileset", "version", "files"})
_ENTRY_KEYS = frozenset({"id", "version"})


class FileSetError(ValueError):
    """A FileSet file that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class FileSetContent:
    """Parsed FileSet file; ``files`` is sorted by file id and validated on construction."""

    fileset: str
    version: int
    files: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        try:
            check_id(self.fileset, "fileset id")
            check_version(self.version, "fileset version")
        except BadId as exc:
            raise FileSetError(str(exc)) from None
        if len(self.files) > MAX_FILES:
            raise FileSetError(f"fileset {self.fileset!r} lists {len(self.files)} files; the limit is {MAX_FILES}")
        seen: set[str] = set()
        for entry in self.files:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise FileSetError(f"file entry {entry!r} must be a (file id, version) pair")
            fid, ver = entry
            try:
                check_id(fid, "file id")
                check_version(ver, f"version of file {fid!r}")
            except BadId as exc:
                raise FileSetError(str(exc)) from None
            if fid == self.fileset:
                raise FileSetError(f"fileset {self.fileset!r} lists itself; its own row is implicit")
            if fid in seen:
                raise FileSetError(f"file id {fid!r} is listed more than once")
            seen.add(fid)
        object.__setattr__(self, "files", tuple(sorted(self.files)))

    def as_dict(self) -> dict[str, int]:
        """file id -> wanted version."""
        return dict(self.files)


def encode_fileset(content: FileSetContent) -> bytes:
    """Canonical bytes: same content, same bytes (and so the same checksums everywhere)."""
    doc = {
        "format": FORMAT,
        "v": FORMAT_VERSION,
        "fileset": content.fileset,
        "version": content.version,
        "files": [{"id": fid, "version": ver} for fid, ver in content.files],
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    if len(data) > MAX_BYTES:
        raise FileSetError(f"encoded fileset is {len(data)} bytes; the limit is {MAX_BYTES}")
    return data


def parse_fileset(
    data: bytes, *, expect_fileset: str | None = None, expect_version: int | None = None
) -> FileSetContent:
    """Parse and validate a FileSet file; raise :class:`FileSetError` saying what is wrong.

    ``expect_fileset``/``expect_version`` check the content against the file id
    and version it was stored under, so a FileSet cannot claim to be another.
    """
    if len(data) > MAX_BYTES:
        raise FileSetError(f"fileset file is {len(data)} bytes; the limit is {MAX_BYTES}")
    try:
        doc: Any = json.loads(bytes(data).decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise FileSetError(f"fileset file is not valid JSON: {exc}") from None
    except RecursionError:  # 1 MiB of '[' nests deeper than the parser's stack
        raise FileSetError("fileset file is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise FileSetError("fileset file must be a JSON object")
    keys = set(doc)
    if keys != _TOP_KEYS:
        missing, extra = sorted(_TOP_KEYS - keys), sorted(keys - _TOP_KEYS)
        raise FileSetError(f"fileset file keys wrong: missing {missing}, unexpected {extra}")
    if doc["format"] != FORMAT:
        raise FileSetError(f"format is {doc['format']!r}, expected {FORMAT!r}")
    if doc["v"] != FORMAT_VERSION or isinstance(doc["v"], bool):
        raise FileSetError(f"format version {doc['v']!r} is not supported (expected {FORMAT_VERSION})")
    files = doc["files"]
    if not isinstance(files, list):
        raise FileSetError("'files' must be a list")
    if len(files) > MAX_FILES:
        raise FileSetError(f"fileset lists {len(files)} files; the limit is {MAX_FILES}")
    entries: list[tuple[str, int]] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
            raise FileSetError(f"files[{i}] must be an object with exactly 'id' and 'version'")
        entries.append((item["id"], item["version"]))
    content = FileSetContent(fileset=doc["fileset"], version=doc["version"], files=tuple(entries))
    if expect_fileset is not None and content.fileset != expect_fileset:
        raise FileSetError(f"file {expect_fileset!r} contains fileset {content.fileset!r}")
    if expect_version is not None and content.version != expect_version:
        raise FileSetError(
            f"fileset {content.fileset!r} stored as version {expect_version} says version {content.version}"
        )
    return content
