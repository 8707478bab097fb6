"""File ids come off the network and become file names: none may escape the data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scaledist.ids import MAX_VERSION, BadId, check_id, check_version, safe_join

BAD_IDS = [
    "../x",
    "../etc/passwd",
    "/abs",
    "a/b",
    "a\\b",
    "..",
    ".",
    "",
    ".hidden",  # decided: hidden names are refused (the first character must be a letter or digit)
    "-rf",
    "a..b",
    "x" * 129,
    "a\x00b",
    "a b",
    "fïle",
    "a@1",  # '@' separates id and version on disk
    "a\n",
]

GOOD_IDS = ["File001", "a", "0", "x.y_z-1", "File002abc", "A" * 128, "v1.2.3"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_refused_with_reason(bad: str) -> None:
    with pytest.raises(BadId) as info:
        check_id(bad, "file id")
    assert str(info.value).startswith(f"file id {bad!r} is not allowed: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("good", GOOD_IDS)
def test_good_ids_pass_unchanged(good: str) -> None:
    assert check_id(good, "file id") == good


@pytest.mark.parametrize("value", [None, 5, b"abc", ["a"]])
def test_non_string_ids_refused(value: object) -> None:
    with pytest.raises(BadId, match="must be a string"):
        check_id(value)


def test_message_names_the_offending_value() -> None:
    with pytest.raises(BadId, match=r"^file id '\.\./etc/passwd' is not allowed: "):
        check_id("../etc/passwd", "file id")


@pytest.mark.parametrize("value", [-1, MAX_VERSION + 1, True, 1.0, "3", None])
def test_bad_versions(value: object) -> None:
    with pytest.raises(BadId):
        check_version(value)


@pytest.mark.parametrize("value", [0, 1, MAX_VERSION])
def test_good_versions(value: int) -> None:
    assert check_version(value) == value


# A path part may carry the storage suffix ("File001@3.data"), so '@' and up to 255 characters pass there.
BAD_PARTS = [b for b in BAD_IDS if b not in ("a@1", "x" * 129)] + ["a@b/../c", "x" * 256]


@pytest.mark.parametrize("bad", BAD_PARTS)
def test_safe_join_refuses_every_bad_part(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BadId):
        safe_join(tmp_path, bad)
    with pytest.raises(BadId):
        safe_join(tmp_path, "fs", bad)


def test_safe_join_inside_root(tmp_path: Path) -> None:
    p = safe_join(tmp_path, "fs1", "File001@3.data")
    assert p == tmp_path.resolve() / "fs1" / "File001@3.data"
    assert p.is_relative_to(tmp_path.resolve())


def test_safe_join_needs_a_part(tmp_path: Path) -> None:
    with pytest.raises(BadId):
        safe_join(tmp_path)


def test_safe_join_catches_symlink_planted_in_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "evil")
    with pytest.raises(BadId, match="escapes the data directory"):
        safe_join(root, "evil", "x@1.data")
    with pytest.raises(BadId, match="escapes the data directory"):
        safe_join(root, "evil")
