"""Blob store benchmark: put and fetch a 100 MB upload on each backend.

    python bench/blobs.py [--size-mib 100] [--runs 3] [--chunk-kib 1024]
                          [--database-url postgresql://...] [--dir DIR]

For the file store (a folder in --dir, default the system's temporary folder) and the
PostgreSQL store (a database of its own on --database-url's server, default
CI_TEST_DATABASE_URL or the one scripts/ensure-postgres.sh starts; created and dropped
here), it times `put` of a file of random bytes (as incompressible as a zip) and `fetch`
of it back to a file, --runs times, and prints the median throughput of each, with the
peak of Python's traced memory during them and how much the process's peak resident
memory grew. `cp` of the same file is the disk's own figure, for scale.

It exits 0 when every blob came back byte for byte, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.event_ingest import print_table, proc_status_kib  # noqa: E402
from ci_server.store.blobs import BlobStore  # noqa: E402
from ci_server.store.blobs_fs import FileBlobStore  # noqa: E402
from ci_server.store.blobs_postgres import PostgresBlobStore  # noqa: E402
from tests.unit.test_blob_store_contract import MiB, digest, random_file  # noqa: E402

POSTGRES_URL = "postgresql://postgres@127.0.0.1:55432/postgres"


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.put: list[float] = []
        self.fetch: list[float] = []
        self.traced_peak = 0
        self.intact = True


async def measure(store: BlobStore, name: str, upload: Path, workdir: Path, runs: int) -> Result:
    result = Result(name)
    expected = digest(upload)
    for run in range(runs):
        key, fetched = f"bench-{run}.zip", workdir / f"fetched-{run}.zip"
        tracemalloc.start()
        result.put.append(await timed(lambda: store.put(key, upload)))  # noqa: B023
        result.fetch.append(await timed(lambda: store.fetch(key, fetched)))  # noqa: B023
        result.traced_peak = max(result.traced_peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        result.intact &= digest(fetched) == expected
        fetched.unlink()
        await store.delete(key)
    return result


def throughput(size: int, durations: list[float]) -> str:
    median = statistics.median(durations)
    return f"{size / MiB / median:,.0f} MB/s ({median:.2f} s, {len(durations)} runs)"


async def copy_figure(upload: Path, workdir: Path, runs: int) -> list[float]:
    """`cp` of the upload in the same folder, fsynced as the file store's put is."""
    durations = []
    for run in range(runs):
        target = workdir / f"copy-{run}.zip"

        def copy(target: Path = target) -> None:
            shutil.copyfile(upload, target)
            with target.open("rb") as file:
                os.fsync(file.fileno())

        durations.append(await timed(lambda copy=copy: asyncio.to_thread(copy)))
        target.unlink()
    return durations


async def execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def run(options: argparse.Namespace, workdir: Path) -> int:
    size = options.size_mib * MiB
    upload = random_file(workdir / "upload.zip", size)
    baseline_kib = proc_status_kib(os.getpid(), "VmRSS") or 0

    results: list[Result] = []
    files = FileBlobStore(workdir / "blobs")
    files.chunk_bytes = options.chunk_kib * 1024
    async with files:
        results.append(await measure(files, "file store", upload, workdir, options.runs))

    database = f"bench_blobs_{uuid.uuid4().hex[:12]}"
    server: str = options.database_url
    url = urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
    try:
        await execute(server, f"CREATE DATABASE {database}")
    except (OSError, asyncpg.PostgresError) as e:
        print(f"bench/blobs.py: cannot use PostgreSQL at {server}: {e}", file=sys.stderr)
        return 2
    try:
        rows = PostgresBlobStore(url)
        rows.chunk_bytes = options.chunk_kib * 1024
        async with rows:
            results.append(await measure(rows, "PostgreSQL store", upload, workdir, options.runs))
    finally:
        await execute(server, f"DROP DATABASE {database} WITH (FORCE)")
    grown_kib = (proc_status_kib(os.getpid(), "VmHWM") or 0) - baseline_kib
    copies = await copy_figure(upload, workdir, options.runs)

    table = [("upload", f"{options.size_mib} MiB of random bytes, {options.chunk_kib} KiB chunks")]
    table.append(("cp + fsync of the file, same disk", throughput(size, copies)))
    for result in results:
        table += [
            (f"{result.name}: put from a file", throughput(size, result.put)),
            (f"{result.name}: fetch to a file", throughput(size, result.fetch)),
            (f"{result.name}: traced memory peak", f"{result.traced_peak / MiB:.1f} MiB"),
            (f"{result.name}: every blob intact", "yes" if result.intact else "NO"),
        ]
    table.append(("process peak RSS above its start, all runs", f"{grown_kib / 1024:.1f} MiB"))
    print_table(table)
    return 0 if all(result.intact for result in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument(
        "--database-url", default=os.environ.get("CI_TEST_DATABASE_URL", POSTGRES_URL)
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the file store writes")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-blobs-", dir=options.dir) as workdir:
        return asyncio.run(run(options, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
