"""The page in a real browser: Debian's chromium driven by selenium (no browser download),
against the real service in a subprocess (uvicorn on 127.0.0.1) over a small index encoded with
the real MiniLM and a gallery with the real dlib detector and descriptor.

Search, enroll a person from two photos, identify a third photo of them and a photo of someone
else, compare two photos, rename and delete people; the people listed in a person's order
(numbers by value, case and accents aside); the index build's progress and a failed upload as
the page shows them; the API docs offline. Screenshots at desktop and phone width go to the
test's folder and, when ``$TRIPLETKIT_SCREENSHOTS`` names a folder, there too. Without chromium
the tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS_ENV = "TRIPLETKIT_SCREENSHOTS"
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT_S = 60.0

DOCS = {
    "amazon": ("Amazon River", "The Amazon is the largest river in the world by discharge of "
               "water, flowing through the rainforest of South America to the Atlantic Ocean."),
    "nile": ("Nile", "The Nile is a major river of north-eastern Africa, flowing north through "
             "Egypt into the Mediterranean Sea; its floods fed farming for millennia."),
    "etna": ("Mount Etna", "Mount Etna is an active volcano on the east coast of Sicily, one of "
             "the most active in the world, with frequent eruptions of lava."),
    "violin": ("Violin", "The violin is a wooden string instrument played with a bow, the "
               "smallest and highest-pitched of the violin family."),
    "jupiter": ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the "
                "Solar System, a gas giant with a Great Red Spot storm."),
    "owl": ("Owl", "Owls are birds of prey, mostly solitary and nocturnal, with upright stance, "
            "a large broad head and keen hearing."),
    "steam": ("Steam engine", "A steam engine is a heat engine that does mechanical work using "
              "steam as its working fluid; it drove the Industrial Revolution."),
    "bridge": ("Golden Gate Bridge", "The Golden Gate Bridge is a suspension bridge spanning "
               "the strait between San Francisco Bay and the Pacific Ocean."),
}  # fmt: skip


# --- the service -------------------------------------------------------------------------------


def need_browser() -> None:
    """Skip without chromium and its driver; under CI, fail instead."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def make_index(folder: Path) -> Path:
    """DOCS encoded with the real MiniLM, saved as ``tripletkit index`` would (and with
    ``texts.json``, so results have snippets)."""
    from tripletkit.search.encoder import default_model_path, encode, load_encoder
    from tripletkit.search.encodings import model_fingerprint
    from tripletkit.search.index import Index

    path = default_model_path()
    ids = list(DOCS)
    model = load_encoder(path, 128)
    vectors = encode(model, [DOCS[d][1] for d in ids], progress=False)
    encoder = {"path": str(path), "max_seq_length": 128, "fingerprint": model_fingerprint(model)}
    extra = {
        "encoder.json": json.dumps(encoder),
        "titles.json": json.dumps({d: DOCS[d][0] for d in ids}),
        "texts.json": json.dumps({d: DOCS[d][1] for d in ids}),
    }
    return Index.build(vectors, ids).save(folder, extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[str], timeout: float = 300) -> None:
    """Until ``GET /health`` answers 200 (the models load in the background)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/health not ready after {timeout} s")


# enrolled before the service starts, one face each (random embeddings: nobody's photo)
OTHERS = ["s10", "Zoë", "s2", "émile"]
LISTED = ["Barack Obama", "émile", "s2", "s10", "Zoë"]  # as a person sorts them


def enroll_others(folder: Path) -> None:
    import numpy as np

    from tripletkit.serve.gallery import Gallery

    rng = np.random.default_rng(0)
    with Gallery.open(folder, 128) as gallery:
        for name in OTHERS:
            gallery.enroll(name, rng.normal(size=(1, 128)).astype(np.float32))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of ``tripletkit serve`` over a small index and a dlib gallery of OTHERS."""
    need_browser()
    pytest.importorskip("dlib")
    root = tmp_path_factory.mktemp("service")
    index = make_index(root / "index")
    enroll_others(root / "gallery")
    port = free_port()
    code = (
        "from tripletkit.serve import serve; "
        f"serve(index_dir={str(index)!r}, gallery_dir={str(root / 'gallery')!r}, port={port})"
    )
    log = (root / "service.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


# --- the browser -------------------------------------------------------------------------------


def chromium(profile: Path) -> Any:
    """Headless chromium through /usr/bin/chromedriver; Selenium Manager downloads nothing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    need_browser()
    driver = chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, found: Callable[[Any], Any], what: str) -> Any:
    """``found(driver)`` once truthy; on timeout, fail naming ``what`` and the page's messages."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(found)
    except TimeoutException:
        infos = texts(driver, ".info, .status")
        pytest.fail(f"waited {WAIT_S} s for {what}; the page says {infos}")


def texts(driver: Any, selector: str) -> list[str]:
    """The rendered text of what ``selector`` matches, read in one go (the page may replace
    the elements at any moment, as search-as-you-type does)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)"
    return list(driver.execute_script(script, selector))


def shoot(driver: Any, folder: Path, name: str, size: tuple[int, int]) -> None:
    """A PNG of the whole page in a window of ``size``, into ``folder`` and
    $TRIPLETKIT_SCREENSHOTS (captured beyond the viewport, so ``vh`` keeps its meaning)."""
    driver.set_window_size(*size)
    content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size[0], "height": content["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    driver.set_window_size(*DESKTOP)
    png = base64.b64decode(shot["data"])
    targets = [folder]
    if os.environ.get(SCREENSHOTS_ENV):
        targets.append(Path(os.environ[SCREENSHOTS_ENV]))
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{name}.png").write_bytes(png)


def no_sideways_scroll(driver: Any, width: int) -> None:
    """At ``width`` CSS pixels, nothing sticks out to the right."""
    driver.set_window_size(width, 844)
    inner = driver.execute_script("return window.innerWidth")
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    driver.set_window_size(*DESKTOP)
    assert scroll <= inner, f"at {width} px the page is {scroll} px wide"


def click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds, again if the page replaced it in between."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt(d: Any) -> bool:
        try:
            d.find_element("css selector", selector).click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(driver, attempt, f"a click on {selector}")


def drop(driver: Any, selector: str, path: Path) -> None:
    """Drop the file at ``path`` on ``selector``, as a drag from the desktop does (a ``drop``
    event whose DataTransfer holds the file)."""
    script = """
        const [selector, name, b64] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, { type: "image/jpeg" }));
        const target = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
          target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                     dataTransfer: data }));
        }
    """
    driver.execute_script(script, selector, path.name, base64.b64encode(path.read_bytes()).decode())


def show(driver: Any, tab: str) -> None:
    click(driver, f"#tab-{tab}")
    wait_for(driver, lambda d: d.find_element("id", f"panel-{tab}").is_displayed(), tab)


# --- the test ----------------------------------------------------------------------------------


def photos() -> dict[str, Path]:
    from photos import fetch_photos

    return fetch_photos()


def test_search_enroll_identify_and_delete_in_chromium(
    service: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    pics = photos()
    shots = tmp_path / "screenshots"
    browser.get(service)
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("ready"), "ready")

    # search: type, enter, results with titles, snippets and scores
    browser.find_element("id", "search-input").send_keys("a volcano erupting", Keys.ENTER)
    wait_for(browser, lambda d: texts(d, "#search-results .result .title"), "search results")
    titles = texts(browser, "#search-results .result .title")
    assert titles[0] == "Mount Etna", titles
    assert len(titles) == len(DOCS)
    assert "active volcano" in texts(browser, "#search-results .result .snippet")[0]
    shoot(browser, shots, "search-desktop", DESKTOP)
    shoot(browser, shots, "search-phone", PHONE)
    no_sideways_scroll(browser, PHONE[0])

    # enroll two photos of Obama through the gallery view
    show(browser, "gallery")
    browser.find_element("id", "enroll-name").send_keys("Barack Obama")
    paths = f"{pics['obama.jpg']}\n{pics['obama2.jpg']}"
    browser.find_element("id", "enroll-files").send_keys(paths)
    click(browser, "#enroll-submit")
    wait_for(browser, lambda d: texts(d, "#people .person-name") == LISTED, "enrolled, in order")
    wait_for(browser, lambda d: "6 faces enrolled" in d.find_element("id", "status").text, "count")
    thumbs = "return [...document.querySelectorAll('#people .thumbs img')].map(i => i.naturalWidth)"
    wait_for(browser, lambda d: d.execute_script(thumbs) == [96, 96], "two thumbnails")
    shoot(browser, shots, "gallery-desktop", DESKTOP)
    shoot(browser, shots, "gallery-phone", PHONE)
    no_sideways_scroll(browser, PHONE[0])

    # identify: a third photo of him (chosen) is named, Biden (dropped) is unknown
    show(browser, "identify")
    labels = "#identify-result .face-box .face-label"
    browser.find_element("id", "photo-input").send_keys(str(pics["obama3.jpg"]))
    wait_for(browser, lambda d: texts(d, labels) == ["Barack Obama"], "Obama identified")
    assert texts(browser, "#identify-info")[0].startswith("1 face, 1 recognised")
    shoot(browser, shots, "identify-desktop", DESKTOP)
    shoot(browser, shots, "identify-phone", PHONE)
    no_sideways_scroll(browser, PHONE[0])
    drop(browser, "#drop-zone", pics["biden.jpg"])
    wait_for(browser, lambda d: texts(d, labels) == ["unknown"], "Biden unknown")
    shoot(browser, shots, "unknown-desktop", DESKTOP)

    # delete him (the page asks first)
    show(browser, "gallery")
    wait_for(browser, lambda d: texts(d, "#gallery-info") == ["5 people"], "the gallery")
    click(browser, '.person[data-name="Barack Obama"] .delete')
    browser.switch_to.alert.accept()
    wait_for(browser, lambda d: texts(d, "#people .person-name") == LISTED[1:], "him deleted")
    wait_for(browser, lambda d: "4 faces enrolled" in d.find_element("id", "status").text, "count")
    assert "Deleted Barack Obama" in browser.find_element("id", "gallery-info").text
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}.png" for n in ("search-desktop", "search-phone", "gallery-desktop",
                             "gallery-phone", "identify-desktop", "identify-phone",
                             "unknown-desktop")
    )  # fmt: skip


def test_the_page_loads_without_console_errors(service: str, browser: Any) -> None:
    browser.get(service)
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("ready"), "ready")
    logs = browser.get_log("browser")
    assert [e for e in logs if e["level"] == "SEVERE"] == []


def test_screenshots_folder_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shoot() writes into $TRIPLETKIT_SCREENSHOTS only when it is set."""

    class Fake:
        def set_window_size(self, *size: int) -> None: ...

        def execute_cdp_cmd(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
            if command == "Page.getLayoutMetrics":
                return {"cssContentSize": {"width": 390, "height": 1000}}
            return {"data": base64.b64encode(b"png").decode()}

    monkeypatch.delenv(SCREENSHOTS_ENV, raising=False)
    shoot(Fake(), tmp_path / "a", "x", PHONE)
    assert (tmp_path / "a" / "x.png").read_bytes() == b"png"
    monkeypatch.setenv(SCREENSHOTS_ENV, str(tmp_path / "b"))
    shoot(Fake(), tmp_path / "a", "y", PHONE)
    assert (tmp_path / "b" / "y.png").read_bytes() == b"png"


def test_without_chromium_ci_fails_and_elsewhere_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and .*no-chromium missing"):
        need_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        need_browser()


# --- issue 20, item 9: verify, rename, order, a failed upload; item 8: progress; item 7: docs --


def test_compare_two_photos_rename_a_person_and_a_failed_upload_in_chromium(
    service: str, browser: Any, tmp_path: Path
) -> None:
    pics = photos()
    shots = tmp_path / "screenshots"
    browser.get(service)
    wait_for(browser, lambda d: d.find_element("id", "status").text.startswith("ready"), "ready")

    show(browser, "verify")
    info = "#verify-info"
    browser.find_element("id", "verify-a").send_keys(str(pics["obama.jpg"]))
    browser.find_element("id", "verify-b").send_keys(str(pics["obama2.jpg"]))
    click(browser, "#verify-submit")
    wait_for(browser, lambda d: texts(d, info)[0].startswith("Same person: distance"), "same")
    shoot(browser, shots, "verify-desktop", DESKTOP)
    shoot(browser, shots, "verify-phone", PHONE)
    no_sideways_scroll(browser, PHONE[0])
    browser.find_element("id", "verify-b").send_keys(str(pics["biden.jpg"]))
    click(browser, "#verify-submit")
    wait_for(browser, lambda d: texts(d, info)[0].startswith("Different people"), "different")

    show(browser, "gallery")
    wait_for(browser, lambda d: texts(d, "#people .person-name")[:1] == ["émile"], "the people")
    click(browser, '.person[data-name="Zoë"] .rename')
    browser.switch_to.alert.send_keys("Ada Zoë")
    browser.switch_to.alert.accept()
    renamed = ["Ada Zoë", "émile", "s2", "s10"]
    wait_for(browser, lambda d: texts(d, "#people .person-name") == renamed, "renamed, re-sorted")
    assert texts(browser, "#gallery-info") == ["Renamed Zoë to Ada Zoë."]

    # a file that is not a photo: the error, in red, and no broken image left behind
    show(browser, "identify")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    browser.find_element("id", "photo-input").send_keys(str(notes))
    wait_for(browser, lambda d: "not an image file" in texts(d, "#identify-info")[0], "refused")
    assert "bad" in browser.find_element("id", "identify-info").get_attribute("class")
    assert browser.find_elements("css selector", "#identify-result img") == []
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
            and "/api/faces/identify" not in e["message"]] == []  # fmt: skip


BUILDING = {
    "status": "loading", "search": False, "faces": True, "documents": None,
    "faces_enrolled": 4, "detail": "search: building (encoding the corpus: 2,048 of 10,033)",
    "parts": {
        "search": {"status": "building", "detail": "encoding the corpus: 2,048 of 10,033 "
                   "documents (20%)", "done": 2048, "total": 10033},
        "faces": {"status": "ready", "detail": None, "done": None, "total": None},
    },
}  # fmt: skip
FAKE_HEALTH = """
    // /health answers what window.fakeHealth holds (503), while it holds something
    const realFetch = window.fetch.bind(window);
    window.fakeHealth = %s;
    window.fetch = (url, options) => window.fakeHealth && String(url) === "/health"
        ? Promise.resolve(new Response(JSON.stringify(window.fakeHealth),
            { status: 503, headers: { "content-type": "application/json" } }))
        : realFetch(url, options);
"""


def test_the_page_shows_the_index_build_as_progress_not_as_an_error(
    service: str, browser: Any, tmp_path: Path
) -> None:
    """While the index builds, /health is 503 "loading": the page said so in red, as a failure,
    and showed no progress. The build is what /health reports (the service's own answer is
    tested in tests/serve/test_serve_api.py); here the page's rendering of it."""
    script = FAKE_HEALTH % json.dumps(BUILDING)
    added = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})
    browser.get(service)
    status = lambda d: d.find_element("id", "status")  # noqa: E731
    wait_for(browser, lambda d: "building the search index: 20%" in status(d).text, "progress")
    assert "(2,048 of 10,033 documents)" in status(browser).text
    assert "4 faces enrolled" in status(browser).text
    assert "bad" not in status(browser).get_attribute("class")
    assert "busy" in status(browser).get_attribute("class")
    search_info = browser.find_element("id", "search-info")
    assert "Search is not ready yet" in search_info.text
    assert "bad" not in search_info.get_attribute("class")
    shoot(browser, tmp_path / "screenshots", "building-desktop", DESKTOP)
    browser.execute_script("window.fakeHealth = null")  # the build is done: the real /health
    wait_for(browser, lambda d: status(d).text.startswith("ready · 8 documents"), "ready")
    assert "busy" not in status(browser).get_attribute("class")
    assert search_info.text == "The search index is ready."
    failed = {**BUILDING, "status": "failed", "detail": "search: failed (ValueError: broken)"}
    browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", added)
    script = FAKE_HEALTH % json.dumps(failed)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})
    browser.refresh()
    wait_for(browser, lambda d: "ValueError: broken" in status(d).text, "the failure")
    assert "bad" in status(browser).get_attribute("class")


def test_the_api_docs_render_offline_without_console_errors(service: str, browser: Any) -> None:
    """/docs was a blank page offline: Swagger UI came from a CDN."""
    browser.get(f"{service}/docs")
    paths = "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.innerText)"
    wait_for(browser, lambda d: "/api/search" in d.execute_script(paths), "the operations")
    assert "/api/faces/enroll" in browser.execute_script(paths)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
