"""The slave state (FIG. 3C, §0060, §0069): what a slave holds of each file it needs.

Built from two inputs only, the durable storage and the newest complete
FileSet file, so a restarted slave reports exactly what it verifiably holds.
Rules:

* the FileSet file itself is always the first row and always wants the
  newest version (§0093), even before the slave has any of it (§0059);
* every listed (FileID, Version) is a row; if storage holds a different
  version the row says the listed version with size 0 (§0069);
* the origin slave (the one whose storage a generator writes, §0038-0039)
  also reports what it holds that the FileSet does not list (yet), and a
  stored version newer than the listed one, because it is the source of
  those blocks.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from scaledist.core.fileset_file import FileSetContent
from scaledist.messages import FileState


class StoredLike(Protocol):
    """What slave_rows needs of a stored file (storage.StoredFile fits)."""

    @property
    def version(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def complete(self) -> bool: ...


def slave_rows(
    fileset: str,
    stored: Mapping[str, StoredLike],
    fileset_content: FileSetContent | None,
    *,
    origin: bool,
) -> tuple[FileState, ...]:
    """The slave state rows for one fileset, FileSet file first.

    ``stored`` maps file id -> newest stored version (``BlockStore.files``).
    ``fileset_content`` is the newest complete FileSet file the slave has
    parsed; the caller keeps it across a version rollover of the FileSet file
    (which deletes the old version from disk once the new one's first block is
    durable).
    """
    if fileset_content is not None and fileset_content.fileset != fileset:
        raise ValueError(f"FileSet content is for {fileset_content.fileset!r}, not {fileset!r}")
    own = stored.get(fileset)
    rows = [
        FileState(
            file_id=fileset,
            version=own.version if own else 0,
            size=own.size if own else 0,
            complete=own.complete if own else False,
            want_newest=True,
            fileset_file=True,
        )
    ]
    if fileset_content is None:
        return tuple(rows)
    listed = fileset_content.as_dict()
    for fid, ver in fileset_content.files:
        st = stored.get(fid)
        if st is not None and (st.version == ver or (origin and st.version > ver)):
            rows.append(FileState(file_id=fid, version=st.version, size=st.size, complete=st.complete))
        else:
            rows.append(FileState(file_id=fid, version=ver, size=0, complete=False))
    if origin:
        for fid in sorted(stored):
            if fid == fileset or fid in listed:
                continue
            st = stored[fid]
            rows.append(FileState(file_id=fid, version=st.version, size=st.size, complete=st.complete))
    return tuple(rows)


def wanted_versions(content: FileSetContent) -> dict[str, int]:
    """file id -> the version the FileSet asks for."""
    return content.as_dict()


def obsolete(
    stored: Mapping[str, StoredLike], content: FileSetContent, *, rollback: bool = False
) -> list[tuple[str, int]]:
    """Stored (file id, version) pairs the FileSet has moved past: safe to delete.

    Only versions older than the listed one by default. With ``rollback`` a
    stored version newer than the listed one is returned too (a FileSet that
    went back; storage refuses older versions while a newer one is stored, so a
    non-origin slave deletes it to follow its FileSet, §0069). Never pass
    ``rollback`` on the origin slave: there a newer version is the generator's
    fresh output.
    """
    out: list[tuple[str, int]] = []
    for fid, ver in content.files:
        st = stored.get(fid)
        if st is None:
            continue
        if st.version < ver or (rollback and st.version > ver):
            out.append((fid, st.version))
    return out
