"""How long the first `make serve` takes from a fresh clone, installation included: the time
from `make serve` in a new clone (no .venv, no runs/) until /health answers 200 (the wiki index
built, the ORL gallery enrolled), and until the faces part alone was ready. Usage:

    python benchmarks/first_serve.py --out benchmarks/first_serve.md [--port 8765]

It clones the repository's HEAD into a temporary folder (uncommitted changes are not in it) and
runs with an empty $TRIPLETKIT_CACHE, so the dlib conversion, the ONNX exports and the chips
are made as on a new machine; only pip's download cache is this machine's. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tripletkit._io import write_text

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 3600


def health(port: int) -> tuple[int, dict]:
    """The status code and body of /health (0 and {} when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "tripletkit"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 - closed below
        began = time.time()
        server = subprocess.Popen(
            ["make", "serve", f"PORT={args.port}"],
            cwd=clone,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TRIPLETKIT_CACHE": str(Path(tmp) / "cache")},
        )
        answered = faces = ready = None
        try:
            while time.time() - began < LIMIT_S and server.poll() is None:
                code, body = health(args.port)
                now = time.time() - began
                if code and answered is None:
                    answered = now
                if body.get("faces") and faces is None:
                    faces = now
                if code == 200:
                    ready = now
                    break
                time.sleep(2)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            log.close()
        tail = (Path(tmp) / "serve.log").read_text()[-2000:]
    if ready is None:
        raise SystemExit(f"the service was not ready within {LIMIT_S} s; its log ends:\n{tail}")
    lines = [
        "# The first `make serve` from a fresh clone (CPU)",
        "",
        f"Regenerate: `python benchmarks/first_serve.py --out benchmarks/first_serve.md` "
        f"({datetime.date.today()}, commit {commit}, {platform.machine()}, {os.cpu_count()} "
        "cores; pip's download cache warm, every tripletkit cache empty).",
        "",
        "From `make serve` in a new clone (installation of .venv included) to:",
        "",
        "| event | seconds |",
        "|---|---|",
        f"| the service answers /health | {answered:.0f} |",
        f"| faces ready (the ORL gallery enrolled and loaded) | {faces:.0f} |"
        if faces is not None
        else "| faces ready | - |",
        f"| ready: /health 200 (the wiki index built and loaded) | {ready:.0f} |",
        "",
    ]
    report = "\n".join(lines)
    if args.out:
        write_text(args.out, report)
        print(f"wrote {args.out}")
    print(report)


if __name__ == "__main__":
    main()
