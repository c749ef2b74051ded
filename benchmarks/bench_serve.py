"""Load test of ``tripletkit serve`` on this machine, against 127.0.0.1 only.

Starts the real service (the wiki index encoded with MiniLM, an ORL gallery enrolled with the
pretrained dlib model, 5 photos per person; each built first when missing) and runs two bounded
scenarios with an asyncio client of fixed concurrency: ``GET /api/search`` over the wiki's
queries, and ``POST /api/faces/identify`` with the ORL photos that were not enrolled. Each
scenario stops at its request count or its time cap, whichever comes first (at most 60 s and
16 connections). It records requests per second, p50 / p99 latency, errors (any answer that is
not 200, or no answer), whether the answers were right, and how many cores the service
process kept busy (its CPU time over the wall time, from /proc).

A third scenario is a burst: ``--burst`` (at most 16) large uploads at once (a 24.5-megapixel
PNG each, just under the pixel cap), sent once; it records how they were answered (200, or 503
from the photo queue), the service's peak memory over its memory before the burst (VmHWM,
reset through /proc/PID/clear_refs), and what it still held once the burst was over.

Usage: python benchmarks/bench_serve.py --out benchmarks/serve_cpu.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tripletkit._io import write_text

ROOT = Path(__file__).resolve().parents[1]
MAX_CONNECTIONS, MAX_SECONDS = 16, 60.0
Send = Callable[[Any, int], Awaitable[tuple[int, bool]]]  # client, i -> status, answer right


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Result:
    """One scenario's measurements; latencies in seconds."""

    name: str
    connections: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    right: int = 0
    cpu_seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def row(self) -> str:
        p50, p99 = np.percentile(np.asarray(self.latencies) * 1000, [50, 99])
        return (
            f"| {self.name} | {self.connections} | {self.requests} | {self.seconds:.1f} | "
            f"{self.requests / self.seconds:.1f} | {p50:.0f} | {p99:.0f} | {self.errors} | "
            f"{100 * self.right / max(1, self.requests):.0f}% | "
            f"{self.cpu_seconds / self.seconds:.2f} |"
        )


# --- what to serve -----------------------------------------------------------------------------


def tripletkit(*args: str) -> None:
    """``tripletkit ARGS`` in a subprocess (offline), failing loudly."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "tripletkit", *args], check=True, env=env)


def ensure_index(folder: Path) -> Path:
    if not (folder / "meta.json").is_file():
        log(f"building the wiki index in {folder} (once)")
        tripletkit("index", "--data", "wiki", "--out", str(folder))
    return folder


def ensure_gallery(folder: Path, per_person: int) -> Path:
    """An ORL gallery with the first ``per_person`` photos (sorted names) of each person."""
    done = folder.with_name(folder.name + ".done")
    if not done.is_file():
        log(f"enrolling ORL into {folder} (once)")
        shutil.rmtree(folder, ignore_errors=True)  # a half-enrolled folder from a failed run
        tripletkit("enroll", "orl", "--gallery", str(folder), "--per-person", str(per_person))
        done.touch()
    return folder


def held_out_photos(per_person: int) -> list[tuple[str, bytes]]:
    """(person, photo bytes) of the ORL photos that ``ensure_gallery`` did not enroll."""
    from tripletkit.faces.images import orl_root

    out = []
    for person in sorted(p for p in orl_root().iterdir() if p.is_dir()):
        files = sorted(p for p in person.iterdir() if p.is_file())[per_person:]
        out += [(person.name, f.read_bytes()) for f in files]
    return out


def wiki_queries(index: Path, data: Path) -> list[str]:
    """The wiki's queries (``queries.jsonl``), or the index's titles when they are absent."""
    file = data / "queries.jsonl"
    if file.is_file():
        with file.open(encoding="utf-8") as f:
            return [json.loads(line)["text"][:500] for line in f if line.strip()]
    return list(json.loads((index / "titles.json").read_text(encoding="utf-8")).values())


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(index: Path, gallery: Path, port: int, log_file: Path) -> subprocess.Popen:
    args = ["serve", "--index", str(index), "--gallery", str(gallery), "--model", "dlib"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_file.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tripletkit", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 600) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with {server.returncode}")
        try:
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code == 200:
                return dict(health.json())
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/health not ready after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load ----------------------------------------------------------------------------------


def search_sender(queries: list[str], k: int) -> Send:
    async def send(client: Any, i: int) -> tuple[int, bool]:
        r = await client.get("/api/search", params={"q": queries[i % len(queries)], "k": k})
        return r.status_code, r.status_code == 200 and len(r.json()["results"]) == k

    return send


def large_png(width: int = 4900, height: int = 5000) -> bytes:
    """24.5 megapixels, RGB, a few hundred kB: 98 MB each time it is decoded whole."""
    import io

    from PIL import Image

    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    pixels = np.broadcast_to(rows, (height, width, 3)).copy()
    pixels[..., 1] = 128
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def memory_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@dataclass
class Burst:
    """The burst's measurements."""

    uploads: int
    megapixels: float
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    before_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0

    def row(self) -> str:
        answered = ", ".join(f"{n} x {code}" for code, n in sorted(self.statuses.items()))
        return (
            f"| {self.uploads} at once, {self.megapixels:.1f} MP PNG each | {answered} | "
            f"{self.seconds:.1f} | {self.before_mb:.0f} | +{self.peak_mb - self.before_mb:.0f} | "
            f"+{self.after_mb - self.before_mb:.0f} |"
        )


async def burst(url: str, uploads: int, pid: int) -> Burst:
    """``uploads`` large identifications at once; memory from /proc before, at the peak, after
    (the last once the service has been idle for a second)."""
    import httpx

    data = large_png()
    result = Burst(uploads, 4900 * 5000 / 1e6)
    limits = httpx.Limits(max_connections=uploads)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        result.before_mb = memory_mb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

        async def one() -> int:
            files = {"image": ("large.png", data, "image/png")}
            try:
                return (await client.post("/api/faces/identify", files=files)).status_code
            except httpx.HTTPError:
                return 0

        start = time.perf_counter()
        codes = await asyncio.gather(*(one() for _ in range(uploads)))
        result.seconds = time.perf_counter() - start
    result.peak_mb = memory_mb(pid, "VmHWM")
    await asyncio.sleep(1.0)
    result.after_mb = memory_mb(pid, "VmRSS")
    for code in codes:
        result.statuses[code] = result.statuses.get(code, 0) + 1
    return result


def identify_sender(photos: list[tuple[str, bytes]]) -> Send:
    async def send(client: Any, i: int) -> tuple[int, bool]:
        person, data = photos[i % len(photos)]
        files = {"image": (f"{person}.pgm", data, "image/x-portable-graymap")}
        r = await client.post("/api/faces/identify", files=files, params={"k": 1})
        faces = r.json()["faces"] if r.status_code == 200 else []
        return r.status_code, [f["decision"] for f in faces] == [person]

    return send


async def load(
    url: str, send: Send, result: Result, total: int, seconds: float, pid: int
) -> Result:
    """``result.connections`` workers send requests 0, 1, 2, ... until ``total`` are sent or
    ``seconds`` have passed."""
    import httpx

    limits = httpx.Limits(max_connections=result.connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for i in range(result.connections):  # warm up: every connection open, models warm
            await send(client, i)
        counter = iter(range(total))
        start, cpu_start = time.perf_counter(), cpu_seconds(pid)
        stop_at = start + seconds

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() >= stop_at:
                    return
                began = time.perf_counter()
                try:
                    status, right = await send(client, i)
                except httpx.HTTPError:
                    status, right = 0, False
                result.latencies.append(time.perf_counter() - began)
                result.errors += status != 200
                result.right += right

        await asyncio.gather(*(worker() for _ in range(result.connections)))
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = cpu_seconds(pid) - cpu_start
    return result


# --- the table ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.machine()


def table(
    results: list[Result], bursts: list[Burst], args: argparse.Namespace, health: dict, load1: float
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# `tripletkit serve` under load (CPU)",
        "",
        f"Regenerate: `python benchmarks/bench_serve.py --out {args.out}` "
        f"({now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{cpu_model()}, Python {platform.python_version()}). The service and the load client "
        f"share this machine; 127.0.0.1 only.",
        "",
        f"- Search: `GET /api/search?k={args.k}` over the {health['documents']:,} documents of "
        "the wiki index (all-MiniLM-L6-v2 zero-shot, exact inner-product FAISS index), cycling "
        "through the wiki's queries.",
        f"- Identify: `POST /api/faces/identify?k=1` with the ORL photos not enrolled (the "
        f"gallery holds {health['faces_enrolled']} faces: {args.per_person} photos of each of "
        "40 people, pretrained dlib descriptor, HOG detector).",
        f"- Each scenario: {args.connections} connections, stops after {args.search_requests} "
        f"(search) or {args.identify_requests} (identify) requests or {args.seconds:.0f} s, "
        "after one warm-up request per connection. Latency is measured at the client, "
        "queueing included.",
        "- Right: search answers holding k results; identifications whose only face is named "
        "as the right person (ORL's 92 x 112 photos are small for the HOG detector, which "
        "misses some faces: such an answer is a 200 with no face, counted as not right).",
        "- Server cores: the service process's CPU time over the scenario's wall time.",
        "",
        "| scenario | connections | requests | seconds | requests/s | p50 ms | p99 ms | errors "
        "| right | server cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(r.row() for r in results),
        "",
        f"Burst: {args.burst} identifications of a large photo sent at once, after the "
        "scenarios above (the service decodes and detects 2 photos at a time, at detection "
        "size; up to 32 more wait their turn, more get 503 with Retry-After). Memory is the "
        "service process's resident set: before the burst, its peak during the burst over "
        "that, and what it still held a second after.",
        "",
        "| burst | answers | seconds | MB before | peak MB | held after, MB |",
        "|---|---|---|---|---|---|",
        *(b.row() for b in bursts),
        "",
        f"Load average when the run started: {load1:.1f} on {os.cpu_count()} cores.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/serve_cpu.md")
    p.add_argument("--index", type=Path, default=ROOT / "runs" / "wiki-index")
    p.add_argument("--gallery", type=Path, default=ROOT / "runs" / "orl-gallery")
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "data" / "wiki-seed0")
    p.add_argument("--per-person", type=int, default=5)
    p.add_argument("--connections", type=int, default=MAX_CONNECTIONS)
    p.add_argument("--seconds", type=float, default=MAX_SECONDS)
    p.add_argument("--search-requests", type=int, default=3000)
    p.add_argument("--identify-requests", type=int, default=600)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--burst", type=int, default=16, help="large uploads at once (0: none)")
    p.add_argument("--note", default="", help="a line added under the table")
    args = p.parse_args(argv)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        p.error(f"--connections must be in 1..{MAX_CONNECTIONS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS:.0f}]")
    if not 0 <= args.burst <= MAX_CONNECTIONS:
        p.error(f"--burst must be in 0..{MAX_CONNECTIONS}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    index = ensure_index(args.index)
    gallery = ensure_gallery(args.gallery, args.per_person)
    photos = held_out_photos(args.per_person)
    queries = wiki_queries(index, args.data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = start_service(index, gallery, port, Path(tmp) / "service.log")
        try:
            health = wait_ready(url, server)
            load1 = os.getloadavg()[0]
            results = []
            for name, send, total in (
                ("search", search_sender(queries, args.k), args.search_requests),
                ("identify", identify_sender(photos), args.identify_requests),
            ):
                log(f"{name}: {args.connections} connections, {total} requests or {args.seconds} s")
                result = Result(name, args.connections)
                results.append(
                    asyncio.run(load(url, send, result, total, args.seconds, server.pid))
                )
                log(results[-1].row())
            bursts = []
            if args.burst:
                log(f"burst: {args.burst} large uploads at once")
                bursts.append(asyncio.run(burst(url, args.burst, server.pid)))
                log(bursts[-1].row())
        finally:
            server.terminate()
            server.wait(timeout=60)
    write_text(args.out, table(results, bursts, args, health, load1))
    log(f"-> {args.out}")


if __name__ == "__main__":
    main()
