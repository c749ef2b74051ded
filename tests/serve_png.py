"""docs/serve.png, the README's picture of the page: search results over the wiki index and an
identified photo, side by side, taken in headless chromium (tests/test_browser.py's helpers).

Serves ``runs/wiki-index`` and a copy of ``runs/orl-gallery`` (``make serve`` builds both),
enrolls Obama from two photos through the page, searches, and identifies a third photo.

    python tests/serve_png.py [OUT.png]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import test_browser as tb  # noqa: E402
from photos import fetch_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (820, 840)  # each half
QUERY = "volcano eruption in Italy"


def take(url: str, work: Path, photos: dict[str, Path]) -> tuple[Path, Path]:
    """Screenshots of the search and identify panels, after enrolling Obama."""
    from selenium.webdriver.common.keys import Keys

    driver = tb.chromium(work / "profile")
    shots = work / "shots"
    try:
        driver.get(url)
        tb.wait_for(driver, lambda d: tb.texts(d, "#status")[0].startswith("ready"), "ready")
        tb.show(driver, "gallery")
        driver.find_element("id", "enroll-name").send_keys("Barack Obama")
        both = f"{photos['obama.jpg']}\n{photos['obama2.jpg']}"
        driver.find_element("id", "enroll-files").send_keys(both)
        tb.click(driver, "#enroll-submit")
        tb.wait_for(driver, lambda d: "Enrolled" in tb.texts(d, "#gallery-info")[0], "enrolled")
        tb.show(driver, "search")
        driver.find_element("id", "search-input").send_keys(QUERY, Keys.ENTER)
        tb.wait_for(driver, lambda d: tb.texts(d, "#search-results .title"), "results")
        tb.shoot(driver, shots, "search", SIZE)
        tb.show(driver, "identify")
        driver.find_element("id", "photo-input").send_keys(str(photos["obama3.jpg"]))
        tb.wait_for(driver, lambda d: tb.texts(d, ".face-label") == ["Barack Obama"], "a name")
        tb.shoot(driver, shots, "identify", SIZE)
    finally:
        driver.quit()
    return shots / "search.png", shots / "identify.png"


def side_by_side(left: Path, right: Path, out: Path) -> None:
    a, b = (Image.open(p).convert("RGB") for p in (left, right))
    height = min(SIZE[1], a.height, b.height)
    image = Image.new("RGB", (a.width + b.width + 2, height), (217, 222, 229))
    image.paste(a.crop((0, 0, a.width, height)), (0, 0))
    image.paste(b.crop((0, 0, b.width, height)), (a.width + 2, 0))
    image.save(out, optimize=True)


def main(out: Path) -> None:
    index, gallery = ROOT / "runs" / "wiki-index", ROOT / "runs" / "orl-gallery"
    for need in (index / "meta.json", ROOT / "runs" / "orl-gallery.done"):
        if not need.is_file():
            raise SystemExit(f"{need} is missing: run `make serve` once first")
    photos = fetch_photos()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(gallery, work / "gallery", ignore=shutil.ignore_patterns("*.lock"))
        port = tb.free_port()
        args = ["serve", "--index", str(index), "--gallery", str(work / "gallery")]
        with (work / "service.log").open("w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "tripletkit", *args, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            tb.wait_ready(url, server)
            side_by_side(*take(url, work, photos), out)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"-> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "serve.png")
