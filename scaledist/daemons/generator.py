"""`scaledist generator`: writes the scenario's files block by block into its slave's storage (§0038-0040).

Each block is stored with its cumulative checksum (the final flag rides on the
last one) and announced to the slave, which reports the new size to its master
at once, so distribution overlaps generation (§0039). Every file version is
announced through a new version of the fileset's FileSet file first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from pathlib import Path

from scaledist import netio, storage
from scaledist.core.fileset_file import FileSetContent, encode_fileset
from scaledist.daemons.common import Context, run
from scaledist.messages import Published
from scaledist.scenario import FilesetPlan, Scenario


def block_bytes(fileset: str, file_id: str, version: int, index: int, length: int) -> bytes:
    """Deterministic content: any run can regenerate and check what a slave holds."""
    return random.Random(f"{fileset}/{file_id}@{version}#{index}").randbytes(length)


class GeneratorDaemon:
    def __init__(self, ctx: Context, scenario: Scenario, data_dir: Path, manifest: Path) -> None:
        self.ctx = ctx
        self.scenario = scenario
        self.store = storage.BlockStore(data_dir, ctx.topology.block_size)
        self.spec = ctx.topology.generators[ctx.ident]
        self.manifest_path = manifest
        self.manifest: dict[str, dict[str, object]] = {}
        self.t0 = 0.0

    async def announce(self, fileset: str, file_id: str, version: int) -> None:
        slave = self.spec.slave
        ep = self.ctx.cluster.endpoint(slave)
        try:
            await netio.call(self.ctx.cluster.control_host(slave), ep.control, self.ctx.codec,
                             Published(fileset=fileset, file_id=file_id, version=version), timeout=5.0)
        except Exception as e:  # the slave's periodic report carries it anyway
            self.ctx.log(f"announce {fileset}/{file_id}@{version} to {slave} failed: {e}")

    async def write_file(self, fileset: str, file_id: str, version: int, size: int, rate: float | None,
                         content: bytes | None = None) -> str:
        """Blocks appended one by one, paced to the generation rate; returns the file's sha256."""
        bs = self.ctx.topology.block_size
        digest = hashlib.sha256()
        n_blocks = max(1, -(-size // bs))
        start = time.monotonic()
        for i in range(n_blocks):
            length = min(bs, size - i * bs)
            data = content[i * bs: i * bs + length] if content is not None else block_bytes(
                fileset, file_id, version, i, length)
            digest.update(data)
            await self.store_block(fileset, file_id, version, data, i == n_blocks - 1)
            await self.announce(fileset, file_id, version)
            if rate:
                ahead = start + (i + 1) * bs / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return digest.hexdigest()

    async def store_block(self, fileset: str, file_id: str, version: int, data: bytes, final: bool) -> None:
        """Append one generated block; a full disk pauses generation until there is room (nothing is lost)."""
        waited = 0.0
        while True:
            try:
                await asyncio.to_thread(self.store.generate_block, fileset, file_id, version, data, final)
                break
            except storage.StorageFull as e:
                if waited == 0.0 or waited >= 10.0:
                    self.ctx.log(f"disk full, generation of {fileset}/{file_id}@{version} paused: {e}")
                    waited = 0.0
                await asyncio.sleep(0.5)
                waited += 0.5
        if waited:
            self.ctx.log(f"disk has room again, generation of {fileset}/{file_id}@{version} resumed")

    async def run_fileset(self, fileset: str, plan: FilesetPlan) -> None:
        """Walks the fileset's timeline: new files and updates, each announced by a new FileSet version."""
        events: list[tuple[float, str, int]] = [(f.start, f.id, f.size) for f in plan.files]
        events += [(u.at, u.file, u.size) for u in plan.updates]
        events.sort(key=lambda e: e[0])
        existing = self.store.stored(fileset, fileset)
        fs_version = existing.version if existing else 0
        versions: dict[str, int] = {}
        files_entry: dict[str, object] = {}
        entry: dict[str, object] = {"files": files_entry}
        self.manifest[fileset] = entry
        i = 0
        while i < len(events):
            at = events[i][0]
            batch = [e for e in events[i:] if e[0] == at]
            i += len(batch)
            # A file started and updated at the same instant is one new version of the last size.
            batch = list({file_id: (t, file_id, size) for t, file_id, size in batch}.values())
            delay = self.t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for _, file_id, _ in batch:
                old = self.store.stored(fileset, file_id)
                versions[file_id] = max(versions.get(file_id, 0), old.version if old else 0) + 1
            fs_version += 1
            listing = FileSetContent(fileset=fileset, version=fs_version, files=tuple(sorted(versions.items())))
            raw = encode_fileset(listing)
            await self.write_file(fileset, fileset, fs_version, len(raw), None, content=raw)
            entry["fileset_version"] = fs_version
            for _, file_id, size in batch:  # what slaves must end with, known before the bytes exist
                files_entry[file_id] = {"version": versions[file_id], "size": size, "sha256": None}
            self.write_manifest(done=False)
            self.ctx.log(f"FileSet {fileset}@{fs_version} published: {dict(versions)}")
            for _, file_id, size in batch:
                t = time.monotonic()
                sha = await self.write_file(fileset, file_id, versions[file_id], size, plan.generation_rate)
                files_entry[file_id] = {"version": versions[file_id], "size": size, "sha256": sha}
                self.write_manifest(done=False)
                self.ctx.log(f"generated {fileset}/{file_id}@{versions[file_id]} {size}B "
                             f"in {time.monotonic() - t:.2f}s")

    def write_manifest(self, done: bool) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generator": self.ctx.ident, "slave": self.spec.slave, "done": done,
                                   "filesets": self.manifest}, indent=1))
        os.replace(tmp, self.manifest_path)

    async def main(self, stop: asyncio.Event) -> None:
        self.t0 = time.monotonic()
        mine = [fs for fs in self.spec.filesets if fs in self.scenario.filesets]
        self.ctx.log(f"generating {','.join(mine) or 'nothing'} into {self.spec.slave}'s storage; "
                     f"block size {self.ctx.topology.block_size}B")
        work = asyncio.gather(*(self.run_fileset(fs, self.scenario.filesets[fs]) for fs in mine))
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            work.result()
            self.write_manifest(done=True)
            self.ctx.log("all files generated")
        else:
            work.cancel()
            self.write_manifest(done=False)
        stopper.cancel()


def main(ctx: Context, scenario: Scenario, data_dir: str, manifest: str) -> int:
    return run(GeneratorDaemon(ctx, scenario, Path(data_dir), Path(manifest)).main, ctx.log)
