"""The FileSet file (FIG. 3B) and the slave state built from it and storage (FIG. 3C, §0059, §0069, §0093)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scaledist.core.blocks import split_blocks
from scaledist.core.fileset_file import (
    MAX_BYTES,
    MAX_FILES,
    FileSetContent,
    FileSetError,
    encode_fileset,
    parse_fileset,
)
from scaledist.core.slave_state import obsolete, slave_rows, wanted_versions
from scaledist.messages import FileState
from scaledist.storage import BlockStore, StoredFile

FS = "FileSet07"


def sf(file_id: str, version: int, size: int, complete: bool = False, fileset: str = FS) -> StoredFile:
    return StoredFile(fileset, file_id, version, size, -(-size // 64) or 1, complete, 0)


CONTENT = FileSetContent(FS, 4, (("File002", 2), ("File001", 5), ("File002abc", 1)))


# --- the FileSet file --------------------------------------------------------


def test_encode_is_canonical_and_round_trips() -> None:
    data = encode_fileset(CONTENT)
    doc = json.loads(data)
    assert doc == {
        "format": "scaledist-fileset",
        "v": 1,
        "fileset": FS,
        "version": 4,
        "files": [{"id": "File001", "version": 5}, {"id": "File002", "version": 2}, {"id": "File002abc", "version": 1}],
    }
    shuffled = FileSetContent(FS, 4, tuple(reversed(CONTENT.files)))
    assert encode_fileset(shuffled) == data  # same content, same bytes, same checksums
    assert parse_fileset(data) == CONTENT
    assert parse_fileset(data, expect_fileset=FS, expect_version=4) == CONTENT


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True), st.integers(0, 2**40)))
def test_round_trip_property(files: dict[str, int]) -> None:
    files.pop(FS, None)
    content = FileSetContent(FS, 1, tuple(files.items()))
    assert parse_fileset(encode_fileset(content)) == content


def _doc(**over: object) -> bytes:
    doc: dict[str, object] = {"format": "scaledist-fileset", "v": 1, "fileset": FS, "version": 1, "files": []}
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (_doc(format="other"), "format is 'other'"),
        (_doc(v=2), "format version 2"),
        (_doc(v=True), "format version True"),
        (json.dumps({"format": "scaledist-fileset", "v": 1}).encode(), "missing ['files', 'fileset', 'version']"),
        (_doc(extra=1), "unexpected ['extra']"),
        (_doc(fileset="../etc"), "fileset id '../etc' is not allowed"),
        (_doc(version=-1), "fileset version -1"),
        (_doc(version="3"), "fileset version '3'"),
        (_doc(files={}), "'files' must be a list"),
        (_doc(files=[["a", 1]]), "files[0] must be an object"),
        (_doc(files=[{"id": "a"}]), "files[0] must be an object with exactly"),
        (_doc(files=[{"id": "a", "version": 1, "x": 0}]), "files[0] must be an object with exactly"),
        (_doc(files=[{"id": "../x", "version": 1}]), "file id '../x' is not allowed"),
        (_doc(files=[{"id": "a/b", "version": 1}]), "file id 'a/b' is not allowed"),
        (_doc(files=[{"id": "a", "version": -2}]), "version of file 'a' -2"),
        (_doc(files=[{"id": "a", "version": 1.5}]), "must be an integer"),
        (_doc(files=[{"id": "a", "version": False}]), "must be an integer"),
        (_doc(files=[{"id": "a", "version": 1}, {"id": "a", "version": 2}]), "'a' is listed more than once"),
        (_doc(files=[{"id": FS, "version": 1}]), "lists itself"),
        (_doc(files=[{"id": f"f{i}", "version": 1} for i in range(MAX_FILES + 1)]), "the limit is 10000"),
        (b" " * (MAX_BYTES + 1), "the limit is 1048576"),
    ],
)
def test_malformed_fileset_refused_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(FileSetError) as info:
        parse_fileset(data)
    assert reason in str(info.value)


def test_expectations_checked() -> None:
    data = encode_fileset(CONTENT)
    with pytest.raises(FileSetError, match="contains fileset 'FileSet07'"):
        parse_fileset(data, expect_fileset="Other")
    with pytest.raises(FileSetError, match="stored as version 5 says version 4"):
        parse_fileset(data, expect_version=5)


def test_max_files_accepted() -> None:
    content = FileSetContent(FS, 1, tuple((f"f{i:05d}", 1) for i in range(MAX_FILES)))
    assert len(parse_fileset(encode_fileset(content)).files) == MAX_FILES


# --- slave state -------------------------------------------------------------


def test_new_slave_reports_only_its_fileset_file() -> None:
    """§0059: deployed without a FileSet; the state starts with a row for it, wanting the newest (§0093)."""
    assert slave_rows(FS, {}, None, origin=False) == (
        FileState(FS, 0, 0, complete=False, want_newest=True, fileset_file=True),
    )


def test_fileset_row_from_storage() -> None:
    rows = slave_rows(FS, {FS: sf(FS, 4, 100)}, None, origin=False)
    assert rows == (FileState(FS, 4, 100, complete=False, want_newest=True, fileset_file=True),)


def test_listed_rows() -> None:
    stored = {
        FS: sf(FS, 4, 180, complete=True),
        "File001": sf("File001", 5, 1000, complete=True),  # current
        "File002": sf("File002", 1, 700, complete=True),  # older than listed: a new version resets size (§0069)
        # File002abc not stored at all
        "Stray": sf("Stray", 1, 10),  # not listed
    }
    rows = slave_rows(FS, stored, CONTENT, origin=False)
    assert rows == (
        FileState(FS, 4, 180, complete=True, want_newest=True, fileset_file=True),
        FileState("File001", 5, 1000, complete=True),
        FileState("File002", 2, 0, complete=False),
        FileState("File002abc", 1, 0, complete=False),
    )
    assert not any(r.want_newest for r in rows[1:])


def test_non_origin_slave_newer_than_listed_reports_listed_version() -> None:
    rows = slave_rows(FS, {"File001": sf("File001", 9, 64)}, CONTENT, origin=False)
    assert FileState("File001", 5, 0) in rows


def test_origin_slave_reports_what_the_generator_wrote() -> None:
    """§0038-0039: the generator's slave is the source of files not yet (or not yet newly) listed."""
    stored = {
        "File001": sf("File001", 6, 128),  # generator is writing the next version
        "File002": sf("File002", 2, 64, complete=True),
        "New": sf("New", 1, 64),
        "Another": sf("Another", 3, 10, complete=True),
    }
    rows = slave_rows(FS, stored, CONTENT, origin=True)
    assert rows == (
        FileState(FS, 0, 0, complete=False, want_newest=True, fileset_file=True),
        FileState("File001", 6, 128),
        FileState("File002", 2, 64, complete=True),
        FileState("File002abc", 1, 0),
        FileState("Another", 3, 10, complete=True),
        FileState("New", 1, 64),
    )


def test_origin_without_fileset_content_reports_only_fileset_row() -> None:
    rows = slave_rows(FS, {"New": sf("New", 1, 64)}, None, origin=True)
    assert [r.file_id for r in rows] == [FS]


def test_content_of_another_fileset_refused() -> None:
    with pytest.raises(ValueError, match="not 'Other'"):
        slave_rows("Other", {}, CONTENT, origin=False)


def test_wanted_and_obsolete() -> None:
    assert wanted_versions(CONTENT) == {"File001": 5, "File002": 2, "File002abc": 1}
    stored = {
        "File001": sf("File001", 3, 10),
        "File002": sf("File002", 2, 10),
        "File002abc": sf("File002abc", 7, 10),
        "Stray": sf("Stray", 1, 10),
    }
    assert obsolete(stored, CONTENT) == [("File001", 3)]
    assert obsolete(stored, CONTENT, rollback=True) == [("File001", 3), ("File002abc", 7)]


def test_slave_state_from_real_storage(tmp_path: Path) -> None:
    """End to end: FileSet file stored and parsed, one file partly received, one a version behind."""
    store = BlockStore(tmp_path, 64)
    data = encode_fileset(CONTENT)
    parts = split_blocks(data, 64)
    assert len(parts) > 1
    for i, part in enumerate(parts):
        store.generate_block(FS, FS, 4, part, final=i == len(parts) - 1)
    store.generate_block(FS, "File001", 5, b"a" * 64, final=False)
    store.generate_block(FS, "File002", 1, b"old", final=True)
    stored = store.files(FS)
    own = stored[FS]
    assert own.complete
    content = parse_fileset(
        b"".join(store.read_block(FS, FS, 4, i)[0] for i in range(own.blocks)), expect_fileset=FS, expect_version=4
    )
    rows = slave_rows(FS, stored, content, origin=False)
    assert rows == (
        FileState(FS, 4, len(data), complete=True, want_newest=True, fileset_file=True),
        FileState("File001", 5, 64),
        FileState("File002", 2, 0),
        FileState("File002abc", 1, 0),
    )
    for fid, ver in obsolete(stored, content):
        store.remove(FS, fid, ver)
    assert "File002" not in store.files(FS)
