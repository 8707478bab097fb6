"""Durable block storage: verify before visible, fsync ordering, crash recovery, concurrent processes."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaledist.core.blocks import RECORD_SIZE, ChecksumRecord, cumulative_crc, encode_record, split_blocks
from scaledist.ids import BadId
from scaledist.storage import (
    BadBlock,
    BlockStore,
    ChecksumMismatch,
    CorruptBlock,
    MissingBlock,
    NotStored,
    OutOfOrder,
    StaleVersion,
    StorageError,
    StorageFull,
    StoredFile,
)

BS = 16
FS = "fs1"


def content(n: int, seed: int = 0) -> bytes:
    """Deterministic, position-dependent bytes (so a misplaced block is caught)."""
    return bytes((i * 7 + seed * 13 + i // 251) % 256 for i in range(n))


def gen_file(store: BlockStore, file_id: str, version: int, data: bytes, final: bool = True) -> StoredFile:
    blocks = split_blocks(data, store.block_size)
    st = None
    for i, b in enumerate(blocks):
        st = store.generate_block(FS, file_id, version, b, final=final and i == len(blocks) - 1)
    assert st is not None
    return st


def sizes(store: BlockStore, file_id: str, version: int) -> tuple[int, int]:
    base = store.root / FS / f"{file_id}@{version}"
    d, c = base.with_name(base.name + ".data"), base.with_name(base.name + ".crc")
    return (d.stat().st_size if d.exists() else -1, c.stat().st_size if c.exists() else -1)


def copy_block(src: BlockStore, dst: BlockStore, file_id: str, version: int, index: int) -> StoredFile:
    data, rec, prev = src.read_block(FS, file_id, version, index)
    return dst.append_block(FS, file_id, version, index, data, rec.crc, prev, rec.final)


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "data", BS)


# --- basics ----------------------------------------------------------------


def test_generate_read_back_and_hash(store: BlockStore) -> None:
    data = content(50)
    st = gen_file(store, "File001", 3, data)
    assert st == StoredFile(FS, "File001", 3, 50, 4, True, cumulative_crc(data, 0))
    assert store.stored(FS, "File001") == st
    assert store.files(FS) == {"File001": st}
    assert b"".join(store.read_block(FS, "File001", 3, i)[0] for i in range(4)) == data
    assert store.file_sha256(FS, "File001", 3) == hashlib.sha256(data).hexdigest()
    assert (store.root / FS / "File001@3.data").stat().st_size == 50
    assert (store.root / FS / "File001@3.crc").stat().st_size == 4 * RECORD_SIZE


def test_copy_between_slaves_chains_checksums(tmp_path: Path) -> None:
    """Each block is verified on receipt with the previous block's cumulative crc (§0064, §0128)."""
    src, dst = BlockStore(tmp_path / "a", BS), BlockStore(tmp_path / "b", BS)
    data = content(70, seed=1)
    gen_file(src, "f", 1, data)
    for i in range(5):
        got = copy_block(src, dst, "f", 1, i)
        assert got.blocks == i + 1
        assert got.last_crc == cumulative_crc(data[: (i + 1) * BS], 0)
        assert got.complete == (i == 4)
    assert dst.file_sha256(FS, "f", 1) == hashlib.sha256(data).hexdigest()
    assert dst.stored(FS, "f") == src.stored(FS, "f")


def test_read_block_returns_record_and_prev(store: BlockStore) -> None:
    data = content(40)
    gen_file(store, "f", 1, data)
    blk, rec, prev = store.read_block(FS, "f", 1, 2)
    assert blk == data[32:]
    assert rec == ChecksumRecord(2, cumulative_crc(data, 0), 8, True)
    assert prev == cumulative_crc(data[:32], 0)


def test_missing_blocks(store: BlockStore) -> None:
    with pytest.raises(MissingBlock):
        store.read_block(FS, "nothing", 1, 0)
    gen_file(store, "f", 1, content(32), final=False)
    with pytest.raises(MissingBlock, match="block 2 is not stored"):
        store.read_block(FS, "f", 1, 2)
    with pytest.raises(MissingBlock):
        store.read_block(FS, "f", 7, 0)
    with pytest.raises(NotStored):
        store.file_sha256(FS, "f", 7)
    assert store.stored(FS, "nothing") is None
    assert store.files("nofileset") == {}


# --- refusals --------------------------------------------------------------


def test_out_of_order(store: BlockStore) -> None:
    data = content(64)
    blocks = split_blocks(data, BS)
    crcs = [cumulative_crc(data[: (i + 1) * BS], 0) for i in range(4)]
    with pytest.raises(OutOfOrder, match="starts at block 0"):
        store.append_block(FS, "f", 1, 1, blocks[1], crcs[1], crcs[0], False)
    store.append_block(FS, "f", 1, 0, blocks[0], crcs[0], 0, False)
    with pytest.raises(OutOfOrder, match="has 1 blocks stored; got block 2"):
        store.append_block(FS, "f", 1, 2, blocks[2], crcs[2], crcs[1], False)
    with pytest.raises(OutOfOrder):  # a duplicate of block 0
        store.append_block(FS, "f", 1, 0, blocks[0], crcs[0], 0, False)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)
    assert OutOfOrder("x").blame == "other"


def test_checksum_mismatch_writes_nothing(store: BlockStore) -> None:
    blocks = split_blocks(content(48), BS)
    c0 = cumulative_crc(blocks[0], 0)
    with pytest.raises(ChecksumMismatch):
        store.append_block(FS, "f", 1, 0, blocks[0], c0 ^ 1, 0, False)
    assert sizes(store, "f", 1) == (-1, -1)  # not even created
    assert store.stored(FS, "f") is None
    store.append_block(FS, "f", 1, 0, blocks[0], c0, 0, False)
    c1 = cumulative_crc(blocks[1], c0)
    damaged = bytes([blocks[1][0] ^ 0xFF]) + blocks[1][1:]
    with pytest.raises(ChecksumMismatch, match="does not verify"):
        store.append_block(FS, "f", 1, 1, damaged, c1, c0, False)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)
    assert store.stored(FS, "f").blocks == 1  # type: ignore[union-attr]


def test_foreign_chain_refused(store: BlockStore) -> None:
    """A source whose earlier blocks differ from ours (prev_crc mismatch) cannot extend our file."""
    mine, theirs = content(32, seed=1), content(32, seed=2)
    store.generate_block(FS, "f", 1, mine[:BS], final=False)
    their_c0 = cumulative_crc(theirs[:BS], 0)
    their_c1 = cumulative_crc(theirs[BS:], their_c0)
    with pytest.raises(ChecksumMismatch, match="differs from stored"):
        store.append_block(FS, "f", 1, 1, theirs[BS:], their_c1, their_c0, True)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)


def test_block_length_rules(store: BlockStore) -> None:
    short = b"x" * (BS - 1)
    with pytest.raises(BadBlock, match="non-final block has exactly 16"):
        store.append_block(FS, "f", 1, 0, short, cumulative_crc(short, 0), 0, False)
    big = b"x" * (BS + 1)
    with pytest.raises(BadBlock):
        store.append_block(FS, "f", 1, 0, big, cumulative_crc(big, 0), 0, True)
    store.generate_block(FS, "f", 1, b"y" * BS, final=False)
    with pytest.raises(BadBlock):
        store.generate_block(FS, "f", 1, b"", final=True)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)


def test_empty_file_is_one_empty_final_block(tmp_path: Path) -> None:
    src, dst = BlockStore(tmp_path / "a", BS), BlockStore(tmp_path / "b", BS)
    st = gen_file(src, "empty", 1, b"")
    assert (st.size, st.blocks, st.complete, st.last_crc) == (0, 1, True, 0)
    assert copy_block(src, dst, "empty", 1, 0).complete


def test_final_flag_completes_the_file(store: BlockStore) -> None:
    st = store.generate_block(FS, "f", 1, b"a" * BS, final=False)
    assert not st.complete
    st = store.generate_block(FS, "f", 1, b"b" * 5, final=True)
    assert st.complete and st.size == BS + 5
    assert store.stored(FS, "f").complete  # type: ignore[union-attr]
    with pytest.raises(OutOfOrder, match="already complete"):
        store.generate_block(FS, "f", 1, b"c", final=True)
    _, rec, _ = store.read_block(FS, "f", 1, 1)
    assert rec.final
    assert not store.read_block(FS, "f", 1, 0)[1].final


def test_version_rollover_deletes_the_old_version(store: BlockStore) -> None:
    gen_file(store, "f", 1, content(40, 1))
    gen_file(store, "g", 1, content(40, 1))
    st = store.generate_block(FS, "f", 2, content(BS, 2), final=False)
    assert (st.version, st.blocks, st.size) == (2, 1, BS)
    assert sizes(store, "f", 1) == (-1, -1)
    assert store.stored(FS, "f") == st
    assert store.stored(FS, "g").version == 1  # type: ignore[union-attr]  # other files untouched
    with pytest.raises(StaleVersion):
        store.generate_block(FS, "f", 1, b"x", final=True)
    data = content(BS, 3)
    with pytest.raises(OutOfOrder):  # a newer version cannot start mid-file
        store.append_block(FS, "f", 3, 1, data, cumulative_crc(data, 5), 5, False)
    with pytest.raises(ChecksumMismatch):  # ... nor chain from anything but 0
        store.append_block(FS, "f", 3, 0, data, cumulative_crc(data, 5), 5, False)
    assert store.stored(FS, "f") == st


def test_remove(store: BlockStore) -> None:
    gen_file(store, "f", 1, content(20))
    assert store.remove(FS, "f", 1)
    assert store.stored(FS, "f") is None
    assert sizes(store, "f", 1) == (-1, -1)
    assert not store.remove(FS, "f", 1)
    assert not store.remove("nofs", "f", 1)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b", "..", "", ".hidden", "a@1"])
def test_path_escaping_ids_refused(tmp_path: Path, bad: str) -> None:
    store = BlockStore(tmp_path / "data", BS)
    with pytest.raises(BadId):
        store.generate_block(FS, bad, 1, b"x", final=True)
    with pytest.raises(BadId):
        store.generate_block(bad, "f", 1, b"x", final=True)
    with pytest.raises(BadId):
        store.read_block(FS, bad, 1, 0)
    with pytest.raises(BadId):
        store.stored(bad, "f")
    with pytest.raises(BadId):
        store.remove(FS, bad, 1)
    outside = sorted(p.name for p in tmp_path.iterdir())
    assert outside == ["data"]
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))


def test_bad_version_refused(store: BlockStore) -> None:
    with pytest.raises(BadId):
        store.generate_block(FS, "f", -1, b"x", final=True)


# --- on-disk damage and recovery ---------------------------------------------


def test_read_block_detects_on_disk_corruption(store: BlockStore) -> None:
    gen_file(store, "f", 1, content(48))
    path = store.root / FS / "f@1.data"
    raw = bytearray(path.read_bytes())
    raw[BS + 3] ^= 0x01
    path.write_bytes(bytes(raw))
    store.read_block(FS, "f", 1, 0)
    with pytest.raises(CorruptBlock) as info:
        store.read_block(FS, "f", 1, 1)
    assert info.value.blame == "receiver"
    # Block 2's crc chains through the damaged block, but it reads its own bytes: still fine on its own.
    store.read_block(FS, "f", 1, 2)
    lines = store.recover(verify=True)
    assert any("block 1 does not verify" in line for line in lines)
    st = store.stored(FS, "f")
    assert st is not None and (st.blocks, st.size, st.complete) == (1, BS, False)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)


def test_read_block_detects_truncated_data(store: BlockStore) -> None:
    gen_file(store, "f", 1, content(40))
    os.truncate(store.root / FS / "f@1.data", 35)
    with pytest.raises(CorruptBlock, match="read 3 of 8"):
        store.read_block(FS, "f", 1, 2)
    store.read_block(FS, "f", 1, 1)  # the blocks before the cut still verify


def test_recover_after_simulated_kill(store: BlockStore) -> None:
    """Killed mid-block (data half written, record half written): every verified block survives."""
    data = content(80)
    gen_file(store, "f", 1, data[:48], final=False)
    dpath, cpath = store.root / FS / "f@1.data", store.root / FS / "f@1.crc"
    with open(dpath, "ab") as f:  # block 3: data half there ...
        f.write(data[48:56])
    rec = encode_record(ChecksumRecord(3, cumulative_crc(data[48:64], cumulative_crc(data[:48], 0)), BS))
    with open(cpath, "ab") as f:  # ... and half its record
        f.write(rec[:11])
    before = store.stored(FS, "f")
    assert before is not None and before.blocks == 3  # the torn block is invisible already
    lines = store.recover()
    assert any("cut 11 bytes of torn" in line for line in lines), lines
    assert any("cut 8 unrecorded bytes" in line for line in lines), lines
    assert sizes(store, "f", 1) == (48, 3 * RECORD_SIZE)
    assert store.stored(FS, "f") == before
    # ... and the block can now be received again and the file completed.
    for i in (3, 4):
        blk = data[i * BS : (i + 1) * BS]
        store.append_block(
            FS, "f", 1, i, blk, cumulative_crc(data[: (i + 1) * BS], 0), cumulative_crc(data[: i * BS], 0), i == 4
        )
    assert store.file_sha256(FS, "f", 1) == hashlib.sha256(data).hexdigest()
    assert store.recover() == []  # nothing left to fix


def test_append_ignores_unrecorded_leftovers_without_recover(store: BlockStore) -> None:
    data = content(32)
    store.generate_block(FS, "f", 1, data[:BS], final=False)
    with open(store.root / FS / "f@1.data", "ab") as f:
        f.write(b"GARBAGE-GARBAGE-GARBAGE")
    with open(store.root / FS / "f@1.crc", "ab") as f:
        f.write(b"\x00" * 30)
    assert store.stored(FS, "f").size == BS  # type: ignore[union-attr]
    store.generate_block(FS, "f", 1, data[BS:], final=True)
    assert sizes(store, "f", 1) == (32, 2 * RECORD_SIZE)
    assert store.file_sha256(FS, "f", 1) == hashlib.sha256(data).hexdigest()


def test_recover_interrupted_rollover(store: BlockStore) -> None:
    """Killed during block 0 of version 2: before its record, v1 is kept; after, v1's deletion is finished."""
    gen_file(store, "f", 1, content(40))
    gen_file(store, "g", 1, content(40))
    # f: v2's data written, record not yet.
    (store.root / FS / "f@2.data").write_bytes(content(BS, 2))
    # g: v2's block 0 complete, but v1 not yet deleted.
    blk = content(BS, 2)
    (store.root / FS / "g@2.data").write_bytes(blk)
    (store.root / FS / "g@2.crc").write_bytes(encode_record(ChecksumRecord(0, cumulative_crc(blk, 0), BS)))
    assert store.stored(FS, "f").version == 1  # type: ignore[union-attr]
    assert store.stored(FS, "g").version == 2  # type: ignore[union-attr]
    lines = store.recover()
    assert "removed fs1/f@2: no verified block" in lines
    assert "removed fs1/g@1: older than version 2 (interrupted rollover)" in lines
    assert sizes(store, "f", 2) == (-1, -1) and sizes(store, "g", 1) == (-1, -1)
    assert store.stored(FS, "f").blocks == 3  # type: ignore[union-attr]
    assert store.stored(FS, "g").blocks == 1  # type: ignore[union-attr]


def test_recover_data_shorter_than_records(store: BlockStore) -> None:
    st = gen_file(store, "f", 1, content(48), final=False)
    os.truncate(store.root / FS / "f@1.data", 20)
    with pytest.raises(StorageError, match="data file has 20 bytes"):  # a hole is refused, not papered over
        store.append_block(FS, "f", 1, 3, b"x", cumulative_crc(b"x", st.last_crc), st.last_crc, True)
    lines = store.recover(verify=False)
    assert any("data file ends inside block 1" in line for line in lines)
    assert sizes(store, "f", 1) == (BS, RECORD_SIZE)


def test_recover_ignores_strangers(store: BlockStore) -> None:
    gen_file(store, "f", 1, content(20))
    (store.root / "README").write_text("not ours")
    (store.root / FS / "notes.txt").write_text("not ours")
    lines = store.recover()
    assert len(lines) == 2 and all(line.startswith("ignored") for line in lines)
    assert (store.root / FS / "notes.txt").exists()
    assert store.stored(FS, "f").complete  # type: ignore[union-attr]


# --- a full disk -------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for a genuinely full filesystem")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {res.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_storage_full_on_a_real_full_filesystem(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        bs = 32 * 1024
        store = BlockStore(mnt / "data", bs)
        data = content(bs)
        stored = 0
        with pytest.raises(StorageFull) as info:
            for _ in range(100):
                store.generate_block(FS, "big", 1, data, final=False)
                stored += 1
        assert info.value.blame == "receiver"
        assert 0 < stored < 100
        st = store.stored(FS, "big")
        assert st is not None and st.blocks == stored and st.size == stored * bs
        for i in range(stored):
            store.read_block(FS, "big", 1, i)  # every visible block verifies
        assert store.recover() == []  # the failed write left nothing to repair
        store.remove(FS, "big", 1)
        store.generate_block(FS, "small", 1, b"ok", final=True)  # works again once space is freed
        assert store.stored(FS, "small").complete  # type: ignore[union-attr]


# --- other processes -----------------------------------------------------------


def _writer(root: str, file_id: str, blocks: int, seed: int, bs: int, final: bool) -> None:
    store = BlockStore(Path(root), bs)
    for i in range(blocks):
        store.generate_block(FS, file_id, 1, content(bs, seed + i), final=final and i == blocks - 1)


def _expected(i: int, bs: int, seed: int = 0) -> bytes:
    return content(bs, seed + i)


def test_concurrent_writer_process_reader_never_sees_unverified(tmp_path: Path) -> None:
    """A generator process appends while the slave reads: every visible block verifies and is the right one."""
    bs, n = 4096, 300
    root = tmp_path / "data"
    reader = BlockStore(root, bs)
    proc = mp.get_context("fork").Process(target=_writer, args=(str(root), "gen", n, 0, bs, True))
    proc.start()
    seen = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        st = reader.stored(FS, "gen")
        files = reader.files(FS)
        assert st is None or "gen" in files
        if st is not None:
            assert st.size == st.blocks * bs
            assert files["gen"].blocks >= st.blocks  # files() was read after stored()
            assert st.blocks >= seen  # monotonic
            for i in range(seen, st.blocks):
                blk, rec, _ = reader.read_block(FS, "gen", 1, i)
                assert blk == _expected(i, bs)
                assert rec.index == i
            seen = st.blocks
            if st.complete:
                break
    proc.join(10)
    assert proc.exitcode == 0
    assert seen == n
    assert reader.recover() == []


def test_two_writer_processes_serialise_on_the_lock(tmp_path: Path) -> None:
    bs, n = 512, 60
    root = tmp_path / "data"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(root), "shared", n, 1000 * k, bs, False)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    store = BlockStore(root, bs)
    st = store.stored(FS, "shared")
    assert st is not None and st.blocks == 2 * n
    for i in range(2 * n):
        store.read_block(FS, "shared", 1, i)  # the whole chain verifies
    assert store.recover() == []


def test_killed_writer_restarts_with_every_verified_block(tmp_path: Path) -> None:
    """SIGKILL a generator at arbitrary instants; after recover() all its visible blocks are intact."""
    bs = 8192
    root = tmp_path / "data"
    ctx = mp.get_context("fork")
    last_seen = 0
    for round_, delay in enumerate((0.0, 0.013, 0.071)):
        proc = ctx.Process(target=_writer, args=(str(root), f"k{round_}", 10_000, 0, bs, True))
        proc.start()
        reader = BlockStore(root, bs)
        deadline = time.monotonic() + 10
        while reader.stored(FS, f"k{round_}") is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        st = reader.stored(FS, f"k{round_}")
        last_seen = st.blocks if st else 0
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        assert proc.exitcode == -signal.SIGKILL  # killed mid-run, not finished
        store = BlockStore(root, bs)
        store.recover()
        after = store.stored(FS, f"k{round_}")
        assert after is not None and after.blocks >= max(last_seen, 1)
        for i in range(after.blocks):
            blk, _, _ = store.read_block(FS, f"k{round_}", 1, i)
            assert blk == _expected(i, bs)
        d, c = sizes(store, f"k{round_}", 1)
        assert (d, c) == (after.blocks * bs, after.blocks * RECORD_SIZE)
        assert store.recover() == []


def test_planted_symlinks_are_not_followed(tmp_path: Path) -> None:
    """Even a symlink planted inside the data directory does not lead reads or writes outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"s" * BS)
    store = BlockStore(tmp_path / "data", BS)
    os.symlink(outside, store.root / "evilfs")
    with pytest.raises(BadId, match="escapes the data directory"):
        store.generate_block("evilfs", "f", 1, b"x", final=True)
    store.generate_block(FS, "f", 1, b"y" * BS, final=False)
    (store.root / FS / "f@1.data").unlink()
    os.symlink(secret, store.root / FS / "f@1.data")
    with pytest.raises(StorageError):
        store.read_block(FS, "f", 1, 0)
    with pytest.raises(StorageError):
        store.generate_block(FS, "f", 1, b"z", final=True)
    assert secret.read_bytes() == b"s" * BS


def test_data_path(store: BlockStore) -> None:
    gen_file(store, "f", 2, content(20))
    p = store.data_path(FS, "f", 2)
    assert p.read_bytes() == content(20)
    with pytest.raises(BadId):
        store.data_path(FS, "../f", 2)
