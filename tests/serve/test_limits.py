"""The photo queue (a few photo jobs at once, a bounded wait, 503 past it), the memory handed
back after a burst, and the real service's peak memory under a burst of large uploads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image

import tripletkit.serve.limits as limits
from tripletkit.serve.limits import Busy, PhotoQueue

MB = 1 << 20


def test_jobs_beyond_the_workers_wait_and_beyond_the_queue_are_refused():
    queue = PhotoQueue(workers=1, waiting=1)
    started, release = threading.Event(), threading.Event()
    results: list[object] = []

    def slow() -> str:
        started.set()
        release.wait(30)
        return "slow"

    async def main() -> None:
        async def one(fn) -> None:  # noqa: ANN001
            try:
                results.append(await queue.run(fn))
            except Busy as err:
                results.append(err)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, slow)
            await anyio.to_thread.run_sync(started.wait)
            tg.start_soon(one, lambda: "queued")
            while queue.queued() < 1:
                await anyio.sleep(0.01)
            await one(lambda: "refused")  # a third: neither a worker nor a place in the queue
            assert queue.running == 1
            release.set()

    anyio.run(main)
    busy = [r for r in results if isinstance(r, Busy)]
    assert len(busy) == 1 and busy[0].retry_after >= 1 and "busy" in str(busy[0])
    assert sorted(r for r in results if isinstance(r, str)) == ["queued", "slow"]


def test_a_job_that_waits_too_long_for_its_turn_is_refused():
    queue = PhotoQueue(workers=1, waiting=4, max_wait_s=0.2)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    async def main() -> Busy | None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.run, hold)
            await anyio.to_thread.run_sync(started.wait)
            try:
                await queue.run(lambda: None)
            except Busy as err:
                return err
            finally:
                release.set()
        return None

    err = anyio.run(main)
    assert err is not None and "no turn to process the photo within" in str(err)


def test_memory_is_handed_back_when_the_last_job_ends(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(limits, "release_memory", lambda: calls.append(1) or True)
    queue = PhotoQueue(workers=2)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(queue.run, lambda: time.sleep(0.05))

    anyio.run(main)
    assert 1 <= len(calls) <= 3 and queue.running == 0
    assert limits._malloc_trim() is not None  # glibc here: the call is real


def test_bad_queue_settings_are_refused():
    with pytest.raises(ValueError, match="workers >= 1"):
        PhotoQueue(workers=0)


# --- the real service under a burst of large uploads ------------------------------------------


def rss_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM (the peak since the last reset) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def large_png(width: int = 4900, height: int = 5000) -> bytes:
    """24.5 megapixels (under the 25-megapixel cap), RGB, a few hundred kB: 98 MB each time
    it is decoded whole (Pillow keeps RGB in 4 bytes a pixel)."""
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    pixels = np.broadcast_to(rows, (height, width, 3)).copy()
    pixels[..., 1] = 128
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


BURST = 6
# 2 workers x (98 MB decoded whole, then 25 MB reduced + about 50 MB of detection): about
# 300 MB measured; the code before the fix (6 decodes at once, 5 copies each) took 2 GB
PEAK_BOUND_MB = 400


def test_a_burst_of_large_uploads_keeps_the_peak_memory_bounded_and_gives_it_back(tmp_path):
    """Issue 20, item 1: 6 such uploads at once took the service from 0.5 to 3.9 GB, 2.3 GB
    still held afterwards. Now at most 2 are decoded at a time, each at detection size as soon
    as Pillow allows, and the memory goes back when the burst ends."""
    pytest.importorskip("dlib")
    import httpx
    from test_serve_api import error, free_port, photo

    data = large_png()
    assert len(data) < 10 * MB
    port = free_port()
    code = f"from tripletkit.serve import serve; serve(gallery_dir={str(tmp_path)!r}, port={port})"
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        files = {"image": ("small.png", photo((200, 120, 90), side=64), "image/png")}
        assert httpx.post(f"{url}/api/faces/identify", files=files, timeout=60).status_code == 200
        before = rss_mb(server.pid, "VmRSS")
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        statuses: list[int] = []

        def upload() -> None:
            files = {"image": ("large.png", data, "image/png")}
            response = httpx.post(f"{url}/api/faces/identify", files=files, timeout=120)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=upload) for _ in range(BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        peak = rss_mb(server.pid, "VmHWM") - before
        print(f"burst of {BURST}: peak +{peak:.0f} MB over {before:.0f} MB")
        assert statuses == [200] * BURST
        assert peak < PEAK_BOUND_MB, f"the burst raised the peak by {peak:.0f} MB"
        held = rss_mb(server.pid, "VmRSS") - before
        for _ in range(100):  # the last request's buffers go as its answer is sent
            if held < 100:
                break
            time.sleep(0.05)
            held = rss_mb(server.pid, "VmRSS") - before
        assert held < 100, f"{held:.0f} MB more than before the burst still held"
        huge = io.BytesIO()
        Image.new("1", (6300, 6300)).save(huge, format="PNG")  # the 40 megapixels
        files = {"image": ("huge.png", huge.getvalue(), "image/png")}
        error(httpx.post(f"{url}/api/faces/identify", files=files), 422, "more than 25000000")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert os.path.isdir(tmp_path)
