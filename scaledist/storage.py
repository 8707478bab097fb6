"""Durable block storage of a slave: a data file and a checksum file per file version (FIG. 3D).

Layout: ``root/<fileset>/<file_id>@<version>.data`` holds the blocks back to
back; ``<file_id>@<version>.crc`` holds one fixed-size record per block
(cumulative CRC32, length, final flag; ``scaledist.core.blocks``). The
checksum file is the truth: a block exists only once its record is there,
and a record is written only after the block verified and its data is
fsynced. Bytes of the data file beyond the last record are invisible and are
cut at start-up (``recover``). So a slave killed at any instant restarts with
every verified block it had and nothing it had not verified.

Writers of one file (the slave daemon, a generator process sharing the
storage, §0038) serialise on an flock of ``<file_id>@lock``; readers take no
lock: they read the checksum file, which only grows by whole verified
records, and re-verify what they read from the data file (§0067).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scaledist.core.blocks import (
    RECORD_SIZE,
    ChecksumRecord,
    cumulative_crc,
    decode_records,
    encode_record,
    length_ok,
)
from scaledist.ids import MAX_VERSION, BadId, check_id, check_version, safe_join
from scaledist.messages import Blame

_NAME_RE = re.compile(
    r"^(?P<fid>[A-Za-z0-9][A-Za-z0-9._-]{0,127})@(?:(?P<ver>0|[1-9][0-9]{0,18})\.(?P<ext>data|crc)|lock)$"
)
_CHUNK = 1 << 20
_RD = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_RW = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


# --- errors ----------------------------------------------------------------


class StorageProblem(Exception):
    """Base of storage refusals. ``blame`` is from the calling slave's point of view
    (``receiver`` = the calling slave itself, as in ``messages.TransferResult``)."""

    blame: Blame = "other"


class BadBlock(StorageProblem):
    """The block breaks the block rule (length, index range)."""


class ChecksumMismatch(StorageProblem):
    """The block does not verify against its checksum, or its chain differs from what is stored."""


class OutOfOrder(StorageProblem):
    """Blocks are stored strictly in sequence; this one is not the next."""


class StaleVersion(StorageProblem):
    """A newer version of the file is already stored."""


class NotStored(StorageProblem):
    """The requested file version is not stored here."""


class MissingBlock(NotStored):
    """The requested block is not (yet) stored here."""


class CorruptBlock(StorageProblem):
    """What was read back from disk does not verify (§0067): our own disk is at fault."""

    blame: Blame = "receiver"


class StorageError(StorageProblem):
    """An I/O error of our own disk."""

    blame: Blame = "receiver"


class StorageFull(StorageError):
    """No space (or quota) left on our own disk (§0089: the slave blames itself)."""


# --- state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredFile:
    """What is verifiably stored of one file version: ``size`` bytes in ``blocks`` blocks."""

    fileset: str
    file_id: str
    version: int
    size: int
    blocks: int
    complete: bool
    last_crc: int


@dataclass(frozen=True, slots=True)
class _Records:
    records: list[ChecksumRecord]
    valid_len: int  # bytes of the checksum file the valid records span
    file_len: int  # bytes of the checksum file on disk

    @property
    def size(self) -> int:
        return sum(r.length for r in self.records)


def _os_error(exc: OSError, what: str) -> StorageError:
    cls = StorageFull if exc.errno in _FULL_ERRNOS else StorageError
    return cls(f"{what}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, min(length, _CHUNK * 64), offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class BlockStore:
    """A slave's durable data files and checksum files under one root directory."""

    def __init__(self, root: Path, block_size: int) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block size {block_size!r} must be a positive integer")
        self.root = Path(root)
        self.block_size = block_size
        self._dirs: dict[str, Path] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"cannot create data directory {self.root}") from exc

    # --- paths and locks ---------------------------------------------------

    def _dir(self, fileset: str) -> Path:
        """The fileset directory, checked once by safe_join (resolving symlinks) and then remembered."""
        d = self._dirs.get(fileset)
        if d is None:
            d = safe_join(self.root, check_id(fileset, "fileset id"))
            self._dirs[fileset] = d
        return d

    def _paths(self, fileset: str, file_id: str, version: int) -> tuple[Path, Path]:
        """Data and checksum file of one version. The ids are validated single names, so joining them
        under the checked directory cannot leave it; files are opened with O_NOFOLLOW besides."""
        d = self._dir(fileset)
        check_id(file_id, "file id")
        check_version(version)
        base = f"{file_id}@{version}"
        return d / (base + ".data"), d / (base + ".crc")

    def data_path(self, fileset: str, file_id: str, version: int) -> Path:
        """Where a version's data file lives (for tools comparing files; only recorded bytes are valid)."""
        return self._paths(fileset, file_id, version)[0]

    def _ensure_dir(self, fileset: str) -> Path:
        d = self._dir(fileset)
        if not d.is_dir():
            try:
                d.mkdir(exist_ok=True)
                _fsync_dir(self.root.resolve())
            except OSError as exc:
                raise _os_error(exc, f"cannot create fileset directory {d}") from exc
        return d

    @contextlib.contextmanager
    def _lock(self, fileset: str, file_id: str) -> Iterator[None]:
        """Serialise writers of one file across threads and processes (version-independent)."""
        path = safe_join(self.root, fileset, f"{check_id(file_id, 'file id')}@lock")
        try:
            fd = os.open(path, _RW | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"cannot open lock {path}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- reading state -----------------------------------------------------

    def _read_records(self, crc_path: Path) -> _Records | None:
        """The valid records of a checksum file, or None if the file does not exist."""
        try:
            with open(os.open(crc_path, _RD), "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, f"cannot read {crc_path}") from exc
        records, valid = decode_records(buf, self.block_size)
        return _Records(records, valid, len(buf))

    def _state(self, fileset: str, file_id: str, version: int, recs: _Records) -> StoredFile:
        last = recs.records[-1] if recs.records else None
        return StoredFile(
            fileset=fileset,
            file_id=file_id,
            version=version,
            size=recs.size,
            blocks=len(recs.records),
            complete=bool(last and last.final),
            last_crc=last.crc if last else 0,
        )

    def _scan(self, fileset: str, file_id: str | None = None) -> dict[str, set[int]]:
        """file id -> versions that have a data or checksum file (only ``file_id``'s if given)."""
        out: dict[str, set[int]] = {}
        try:
            names = os.listdir(self._dir(fileset))
        except (FileNotFoundError, NotADirectoryError):
            return out
        except OSError as exc:
            raise _os_error(exc, f"cannot list fileset {fileset!r}") from exc
        if file_id is not None:
            prefix = file_id + "@"
            names = [n for n in names if n.startswith(prefix)]
        for name in names:
            m = _NAME_RE.fullmatch(name)
            if m and m["ver"] is not None and ".." not in m["fid"] and int(m["ver"]) <= MAX_VERSION:
                out.setdefault(m["fid"], set()).add(int(m["ver"]))
        return out

    def _newest(self, fileset: str, file_id: str, versions: set[int] | None = None) -> StoredFile | None:
        """Newest version with at least one record. A version with none is invisible.

        Another process may delete an older version while we look (a version
        rollover); if a file vanished under us, look again.
        """
        for _attempt in range(3):
            if versions is None:
                versions = self._scan(fileset, file_id).get(file_id, set())
            vanished = False
            for ver in sorted(versions, reverse=True):
                recs = self._read_records(self._paths(fileset, file_id, ver)[1])
                if recs is None:
                    vanished = True
                    continue
                if recs.records:
                    return self._state(fileset, file_id, ver, recs)
            if not vanished:
                return None
            versions = None
        return None

    def stored(self, fileset: str, file_id: str) -> StoredFile | None:
        """The newest verifiably stored version of a file, or None."""
        check_id(file_id, "file id")
        return self._newest(fileset, file_id)

    def files(self, fileset: str) -> dict[str, StoredFile]:
        """file id -> newest verifiably stored version, for every file of a fileset."""
        out: dict[str, StoredFile] = {}
        for fid, versions in sorted(self._scan(fileset).items()):
            st = self._newest(fileset, fid, versions)
            if st is not None:
                out[fid] = st
        return out

    def filesets(self) -> list[str]:
        """Fileset directories present under the root."""
        try:
            return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and _is_id(e.name))
        except OSError as exc:
            raise _os_error(exc, f"cannot list {self.root}") from exc

    # --- writing -----------------------------------------------------------

    def append_block(
        self,
        fileset: str,
        file_id: str,
        version: int,
        index: int,
        data: bytes,
        crc: int,
        prev_crc: int,
        final: bool,
    ) -> StoredFile:
        """Verify and durably store the next block of a file (§0064-0065, §0129).

        Nothing is written unless the block is the next one in sequence, its
        chain matches what is stored and ``cumulative_crc(data, prev_crc) == crc``.
        Block 0 of a newer version starts that version; the older version is
        deleted once that block is durable.
        """
        self._check_block(index, data, final)
        if cumulative_crc(data, prev_crc) != crc:
            raise ChecksumMismatch(
                f"block {index} of {fileset}/{file_id}@{version} does not verify: "
                f"crc32 from {prev_crc:#010x} is {cumulative_crc(data, prev_crc):#010x}, header says {crc:#010x}"
            )
        self._paths(fileset, file_id, version)
        self._ensure_dir(fileset)
        with self._lock(fileset, file_id):
            return self._append_locked(fileset, file_id, version, index, data, crc, prev_crc, final)

    def generate_block(self, fileset: str, file_id: str, version: int, data: bytes, final: bool) -> StoredFile:
        """A generator's write (§0039): compute the checksum chain and append the next block."""
        self._paths(fileset, file_id, version)
        self._ensure_dir(fileset)
        with self._lock(fileset, file_id):
            cur = self._newest(fileset, file_id)
            if cur is not None and cur.version == version:
                index, prev = cur.blocks, cur.last_crc
            else:
                index, prev = 0, 0
            self._check_block(index, data, final)
            crc = cumulative_crc(data, prev)
            return self._append_locked(fileset, file_id, version, index, data, crc, prev, final)

    def _check_block(self, index: int, data: bytes, final: bool) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 0xFFFFFFFF:
            raise BadBlock(f"block index {index!r} out of range")
        if not length_ok(index, len(data), bool(final), self.block_size):
            rule = f"1..{self.block_size}" if final else f"exactly {self.block_size}"
            kind = "final" if final else "non-final"
            raise BadBlock(f"block {index} has {len(data)} bytes; a {kind} block has {rule}")

    def _append_locked(
        self,
        fileset: str,
        file_id: str,
        version: int,
        index: int,
        data: bytes,
        crc: int,
        prev_crc: int,
        final: bool,
    ) -> StoredFile:
        name = f"{fileset}/{file_id}@{version}"
        data_path, crc_path = self._paths(fileset, file_id, version)
        all_versions = self._scan(fileset, file_id).get(file_id, set())
        cur = self._newest(fileset, file_id, all_versions)
        if cur is not None and version < cur.version:
            raise StaleVersion(f"{name} is older than the stored version {cur.version}")
        if cur is not None and version == cur.version:
            if cur.complete:
                raise OutOfOrder(f"{name} is already complete with {cur.blocks} blocks; got block {index}")
            if index != cur.blocks:
                raise OutOfOrder(f"{name} has {cur.blocks} blocks stored; got block {index}")
            if prev_crc != cur.last_crc:
                raise ChecksumMismatch(
                    f"{name} block {index}: previous crc {prev_crc:#010x} differs from stored {cur.last_crc:#010x}"
                )
            records_before = cur.blocks
        else:
            if index != 0:
                raise OutOfOrder(f"{name} is not stored; a new version starts at block 0, got block {index}")
            if prev_crc != 0:
                raise ChecksumMismatch(f"{name} block 0 must chain from 0, got previous crc {prev_crc:#010x}")
            records_before = 0
        recs = self._read_records(crc_path)
        crc_len = recs.file_len if recs else 0
        crc_created = recs is None
        offset = index * self.block_size
        valid_len = records_before * RECORD_SIZE

        # 1. data at its offset, durable. Bytes past the recorded blocks are leftovers of a crash: drop them.
        data_created = not data_path.exists()
        try:
            fd = os.open(data_path, _RW | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"cannot open {data_path}") from exc
        try:
            have = os.fstat(fd).st_size
            if have < offset:
                raise StorageError(f"{name}: data file has {have} bytes but its checksums cover {offset}")
            if have != offset:
                os.ftruncate(fd, offset)
            _pwrite_all(fd, data, offset)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, offset)
            raise _os_error(exc, f"cannot write block {index} of {name}") from exc
        finally:
            os.close(fd)

        # 2. the record, durable: from here on the block is visible.
        record = ChecksumRecord(index=index, crc=crc, length=len(data), final=bool(final))
        try:
            fd = os.open(crc_path, _RW | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"cannot open {crc_path}") from exc
        try:
            if crc_len != valid_len:
                os.ftruncate(fd, valid_len)
            _pwrite_all(fd, encode_record(record), valid_len)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, valid_len)
            with contextlib.suppress(OSError):
                os.truncate(data_path, offset)  # give the space back; the bytes were never visible
            raise _os_error(exc, f"cannot record block {index} of {name}") from exc
        finally:
            os.close(fd)
        try:
            if data_created or crc_created:
                _fsync_dir(data_path.parent)
        except OSError as exc:
            raise _os_error(exc, f"cannot make the new files of {name} durable") from exc
        # 3. a newer version's first block is durable: the older versions have had their day.
        if index == 0:
            try:
                self._delete_versions(fileset, file_id, all_versions - {version})
            except OSError as exc:
                raise _os_error(exc, f"{name}: block 0 stored, but deleting older versions failed") from exc
        size = (cur.size if records_before else 0) + len(data)
        return StoredFile(fileset, file_id, version, size, records_before + 1, bool(final), crc)

    def _delete_versions(self, fileset: str, file_id: str, versions: set[int]) -> None:
        """Unlink checksum file first, so a half-deleted version is invisible rather than corrupt."""
        if not versions:
            return
        for ver in versions:
            data_path, crc_path = self._paths(fileset, file_id, ver)
            crc_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
        _fsync_dir(self._dir(fileset))

    def remove(self, fileset: str, file_id: str, version: int) -> bool:
        """Delete one stored version (e.g. obsolete per the FileSet); True if anything was there."""
        data_path, crc_path = self._paths(fileset, file_id, version)
        if not self._dir(fileset).is_dir():
            return False
        with self._lock(fileset, file_id):
            existed = data_path.exists() or crc_path.exists()
            try:
                self._delete_versions(fileset, file_id, {version})
            except OSError as exc:
                raise _os_error(exc, f"cannot remove {fileset}/{file_id}@{version}") from exc
            return existed

    # --- reading blocks ----------------------------------------------------

    def read_block(self, fileset: str, file_id: str, version: int, index: int) -> tuple[bytes, ChecksumRecord, int]:
        """Block ``index`` with its record and the previous cumulative crc, verified after the read (§0067)."""
        name = f"{fileset}/{file_id}@{version}"
        data_path, crc_path = self._paths(fileset, file_id, version)
        recs = self._read_records(crc_path)
        if recs is None or not recs.records:
            raise MissingBlock(f"{name} is not stored")
        if not 0 <= index < len(recs.records):
            raise MissingBlock(f"{name} has {len(recs.records)} blocks; block {index} is not stored")
        record = recs.records[index]
        prev = recs.records[index - 1].crc if index else 0
        try:
            fd = os.open(data_path, _RD)
        except FileNotFoundError:
            raise MissingBlock(f"{name} was removed while reading block {index}") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot open {data_path}") from exc
        try:
            data = _pread_exact(fd, record.length, index * self.block_size)
        except OSError as exc:
            raise _os_error(exc, f"cannot read block {index} of {name}") from exc
        finally:
            os.close(fd)
        if len(data) != record.length:
            raise CorruptBlock(f"block {index} of {name}: read {len(data)} of {record.length} bytes")
        got = cumulative_crc(data, prev)
        if got != record.crc:
            raise CorruptBlock(
                f"block {index} of {name} read back from disk as {got:#010x}, expected {record.crc:#010x}"
            )
        return data, record, prev

    def file_sha256(self, fileset: str, file_id: str, version: int) -> str:
        """SHA-256 of the verifiably stored bytes of one version, streamed."""
        name = f"{fileset}/{file_id}@{version}"
        data_path, crc_path = self._paths(fileset, file_id, version)
        recs = self._read_records(crc_path)
        if recs is None or not recs.records:
            raise NotStored(f"{name} is not stored")
        remaining = recs.size
        h = hashlib.sha256()
        try:
            with open(os.open(data_path, _RD), "rb") as f:
                while remaining > 0:
                    chunk = f.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise CorruptBlock(f"{name}: data file is shorter than its {recs.size} recorded bytes")
                    h.update(chunk)
                    remaining -= len(chunk)
        except FileNotFoundError:
            raise NotStored(f"{name} was removed while hashing") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot read {data_path}") from exc
        return h.hexdigest()

    # --- repair of a bad copy (verify on read, scrub) -------------------------

    def first_bad_block(self, fileset: str, file_id: str, version: int) -> int | None:
        """Index of the first stored block of a version that no longer verifies from disk, or None.

        A scrub: finds a copy that went bad on disk before anyone asks for it (§0067 checks only on read).
        """
        data_path, crc_path = self._paths(fileset, file_id, version)
        recs = self._read_records(crc_path)
        if recs is None or not recs.records:
            return None
        try:
            return self._first_bad_block(data_path, recs.records)
        except FileNotFoundError:
            return None  # removed meanwhile (a version rollover): nothing of it is visible any more
        except OSError as exc:
            raise _os_error(exc, f"cannot scrub {fileset}/{file_id}@{version}") from exc

    def discard_from(self, fileset: str, file_id: str, version: int, index: int) -> StoredFile | None:
        """Drop block ``index`` and every later block of a version, if block ``index`` still fails to verify.

        A slave that read a corrupt block from its own disk must stop offering it: it keeps the blocks before
        the bad one (each verifies on its own against the previous record) and reports the shorter file, so
        its master has it fetch the rest again (§0069). Checked again under the writers' lock, so a block
        appended or a version replaced meanwhile is never cut. Returns what remains (None: nothing).
        """
        name = f"{fileset}/{file_id}@{version}"
        data_path, crc_path = self._paths(fileset, file_id, version)
        if not self._dir(fileset).is_dir():
            return None
        with self._lock(fileset, file_id):
            recs = self._read_records(crc_path)
            if recs is None or not 0 <= index < len(recs.records):
                return self._newest(fileset, file_id)
            try:
                bad = self._first_bad_block(data_path, recs.records[: index + 1])
            except FileNotFoundError:
                bad = index
            except OSError as exc:
                raise _os_error(exc, f"cannot re-check block {index} of {name}") from exc
            if bad is None:
                return self._newest(fileset, file_id)  # it verifies now: a transient read error, keep it
            try:
                if bad == 0:
                    self._delete_versions(fileset, file_id, {version})
                else:
                    _truncate(crc_path, bad * RECORD_SIZE)
                    _truncate(data_path, sum(r.length for r in recs.records[:bad]))
            except OSError as exc:
                raise _os_error(exc, f"cannot cut {name} at block {bad}") from exc
            return self._newest(fileset, file_id)

    # --- start-up ----------------------------------------------------------

    def recover(self, verify: bool = True) -> list[str]:
        """Repair what a crash can leave behind; returns one line per repair.

        Cuts torn checksum tails and data past the recorded blocks, (``verify``)
        re-checks every block from disk and cuts from the first bad one, removes
        versions left without any block, and finishes an interrupted version
        rollover (keeps only the newest version that has blocks).
        """
        lines: list[str] = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return lines
        except OSError as exc:
            raise _os_error(exc, f"cannot list {self.root}") from exc
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or not _is_id(entry.name):
                lines.append(f"ignored {entry.name!r} in {self.root}: not a fileset directory")
                continue
            fileset = entry.name
            for name in sorted(os.listdir(entry.path)):
                if not _NAME_RE.fullmatch(name) or ".." in name.split("@", 1)[0]:
                    lines.append(f"ignored {fileset}/{name}: not a data, checksum or lock file")
            for file_id, versions in sorted(self._scan(fileset).items()):
                with self._lock(fileset, file_id):
                    try:
                        self._recover_file(fileset, file_id, versions, verify, lines)
                    except OSError as exc:
                        raise _os_error(exc, f"cannot recover {fileset}/{file_id}") from exc
        return lines

    def _recover_file(self, fileset: str, file_id: str, versions: set[int], verify: bool, lines: list[str]) -> None:
        kept: list[int] = []
        for ver in sorted(versions, reverse=True):
            if self._recover_version(fileset, file_id, ver, verify, lines) > 0:
                kept.append(ver)
        keep = kept[0] if kept else None
        drop = {v for v in versions if v != keep}
        for ver in sorted(drop):
            why = "no verified block" if ver not in kept else f"older than version {keep} (interrupted rollover)"
            lines.append(f"removed {fileset}/{file_id}@{ver}: {why}")
        self._delete_versions(fileset, file_id, drop)

    def _recover_version(self, fileset: str, file_id: str, version: int, verify: bool, lines: list[str]) -> int:
        """Make one version's files consistent; returns the number of blocks kept."""
        name = f"{fileset}/{file_id}@{version}"
        data_path, crc_path = self._paths(fileset, file_id, version)
        recs = self._read_records(crc_path) or _Records([], 0, 0)
        records = recs.records
        if recs.file_len > recs.valid_len:
            lines.append(
                f"{name}: cut {recs.file_len - recs.valid_len} bytes of torn or invalid checksum records "
                f"after block {len(records) - 1}"
            )
        try:
            data_size = data_path.stat().st_size
        except FileNotFoundError:
            data_size = 0
        keep = len(records)
        for i, rec in enumerate(records):
            if i * self.block_size + rec.length > data_size:
                keep = i
                lines.append(f"{name}: data file ends inside block {i} ({data_size} bytes); {_kept(i)}")
                break
        if verify and keep:
            bad = self._first_bad_block(data_path, records[:keep])
            if bad is not None:
                lines.append(f"{name}: block {bad} does not verify on disk; {_kept(bad)}")
                keep = bad
        records = records[:keep]
        crc_len = keep * RECORD_SIZE
        size = sum(r.length for r in records)
        if crc_path.exists() and recs.file_len != crc_len:
            _truncate(crc_path, crc_len)
        if data_path.exists() and data_size != size:
            if data_size > size and keep == len(recs.records):
                lines.append(f"{name}: cut {data_size - size} unrecorded bytes from the data file")
            _truncate(data_path, size)
        return keep

    def _first_bad_block(self, data_path: Path, records: list[ChecksumRecord]) -> int | None:
        with open(os.open(data_path, _RD), "rb") as f:
            prev = 0
            for rec in records:
                f.seek(rec.index * self.block_size)
                crc, remaining = prev, rec.length
                while remaining > 0:
                    chunk = f.read(min(_CHUNK, remaining))
                    if not chunk:
                        return rec.index
                    crc = cumulative_crc(chunk, crc)
                    remaining -= len(chunk)
                if crc != rec.crc:
                    return rec.index
                prev = rec.crc
        return None


def _truncate(path: Path, length: int) -> None:
    fd = os.open(path, _RW)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


def _kept(n: int) -> str:
    return "kept no block" if n == 0 else f"kept blocks 0..{n - 1}"


def _is_id(name: str) -> bool:
    try:
        check_id(name)
    except BadId:
        return False
    return True
