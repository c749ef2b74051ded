"""The HTTP service through FastAPI's TestClient: every endpoint, every bad input, with stand-in
models (colour-coded photos, a bag-of-words encoder) and once with dlib's real detector and
descriptor on real photos."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tripletkit.search.index import Index
from tripletkit.serve.app import ServeConfig, Services, create_app
from tripletkit.serve.faces import FaceService
from tripletkit.serve.gallery import Gallery
from tripletkit.serve.search import Batcher, SearchService, snippet

WORDS = ["river", "mountain", "violin", "planet", "bird", "engine", "poem", "bridge"]
TOKEN = "s3cret-token"


# --- stand-ins ---------------------------------------------------------------------------------


def bag_of_words(texts: list[str]) -> np.ndarray:
    """(n, 9) unit vectors: word counts over WORDS plus a constant."""
    rows = [[t.lower().split().count(w) for w in WORDS] + [0.1] for t in texts]
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def search_service(texts: bool = True) -> SearchService:
    ids = [f"d{i}" for i in range(len(WORDS))]
    docs = [f"all about the {w} " + "and more words " * 30 for w in WORDS]
    index = Index.build(bag_of_words(docs), ids)
    titles = {d: f"The {w}" for d, w in zip(ids, WORDS, strict=True)}
    return SearchService(
        index, bag_of_words, titles, dict(zip(ids, docs, strict=True)) if texts else None
    )


@dataclass(frozen=True)
class FakeFace:
    box: tuple[int, int, int, int]
    chip: np.ndarray


def fake_detect(image: Image.Image) -> list[FakeFace]:
    """No face in a dark image; one face per square of a strip (width // height faces)."""
    rgb = np.asarray(image)
    if rgb.max() < 10:
        return []
    h = image.height
    faces = []
    for i in range(max(1, image.width // h)):
        square = image.crop((i * h, 0, (i + 1) * h, h)).resize((150, 150))
        faces.append(FakeFace((i * h, 0, (i + 1) * h, h), np.asarray(square)))
    return faces


class FakeModel:
    """Embeds a face as its mean colour and a constant, normalised: a colour is a person."""

    threshold = 0.2

    def prepare(self, image: Image.Image, face: FakeFace) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(face.chip.transpose(2, 0, 1)))

    def embed(self, inputs: torch.Tensor) -> np.ndarray:
        x = inputs.float().mean(dim=(2, 3)).numpy()
        x = np.concatenate([x, np.full((len(x), 1), 30.0)], 1)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def photo(*colours: tuple[int, int, int], side: int = 32, fmt: str = "PNG") -> bytes:
    """A strip of squares of the given colours (one fake face each)."""
    image = Image.new("RGB", (side * max(1, len(colours)), side))
    for i, colour in enumerate(colours):
        image.paste(colour, (i * side, 0, (i + 1) * side, side))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


RED, GREEN, BLUE, DARK = (250, 10, 10), (10, 250, 10), (10, 10, 250), (0, 0, 0)


BASE_URL = "http://127.0.0.1:8000"


def local(app, **kwargs) -> TestClient:
    """A test client that reaches the app under one of its names (Host 127.0.0.1:8000), as a
    client on this machine does."""
    return TestClient(app, base_url=BASE_URL, **kwargs)


def make_client(tmp_path: Path, search: bool = True, faces: bool = True, **limits) -> TestClient:
    config = ServeConfig(**limits)
    gallery = Gallery.open(tmp_path / "gallery", 4) if faces else None
    services = Services(
        search_service() if search else None,
        FaceService(gallery, FakeModel(), fake_detect, None, config.max_pixels)
        if gallery is not None
        else None,
    )
    return local(create_app(config, services))


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture
def guarded(tmp_path):
    with make_client(tmp_path, token=TOKEN) as c:
        yield c


def error(response, status: int, fragment: str) -> dict:
    """A JSON error with the status and a message containing ``fragment``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status
    assert fragment in body["detail"], body["detail"]
    return body


def enroll(client, name, *photos, headers=None, **form):
    files = [("image", (f"p{i}.png", data, "image/png")) for i, data in enumerate(photos)]
    return client.post(
        "/api/faces/enroll", data={"name": name, **form}, files=files, headers=headers
    )


def identify(client, data, name="q.png", headers=None, **params):
    files = {"image": (name, data, "image/png")}
    return client.post("/api/faces/identify", files=files, params=params, headers=headers)


def verify(client, first, second, headers=None):
    files = [("image", ("a.png", first, "image/png")), ("image", ("b.png", second, "image/png"))]
    return client.post("/api/faces/verify", files=files, headers=headers)


def wait_for(condition, what: str, seconds: float = 60):  # noqa: ANN001, ANN201
    """``condition()`` once truthy, polled; fails naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    pytest.fail(f"waited {seconds} s for {what}")


# --- health, page, schema ----------------------------------------------------------------------


def test_health_is_ready_with_what_is_loaded(client):
    body = client.get("/health").json()
    assert body | {"detail": None} == {
        "status": "ready",
        "search": True,
        "faces": True,
        "documents": len(WORDS),
        "faces_enrolled": 0,
        "detail": None,
        "parts": {
            name: {"status": "ready", "detail": None, "done": None, "total": None}
            for name in ("search", "faces")
        },
    }
    assert client.get("/health/live").json()["status"] == "alive"


def test_health_is_503_while_loading_then_200():
    release = threading.Event()

    def slow_loader() -> Services:
        release.wait(30)
        return Services(search_service(), None)

    with local(create_app(ServeConfig(), slow_loader)) as client:
        loading = client.get("/health")
        assert (loading.status_code, loading.json()["status"]) == (503, "loading")
        error(client.get("/api/search", params={"q": "river"}), 503, "still loading")
        assert client.get("/health/live").status_code == 200
        release.set()
        for _ in range(300):  # the loader thread finishes right after the release
            if client.get("/health").status_code == 200:
                break
            release.wait(0.05)
        assert client.get("/health").json()["status"] == "ready"


def test_a_failed_load_is_reported_by_health_and_every_endpoint():
    def broken() -> Services:
        raise ValueError("no index in /nowhere (expected index.faiss and meta.json)")

    with local(create_app(ServeConfig(), broken)) as client:
        for _ in range(300):
            if client.get("/health").json()["status"] == "failed":
                break
            threading.Event().wait(0.05)
        failed = client.get("/health")
        assert failed.status_code == 503
        assert "no index in /nowhere" in failed.json()["detail"]
        error(client.get("/api/faces/people"), 503, "loading failed: ValueError: no index")


def test_the_page_and_its_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>tripletkit</title>" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_the_page_names_an_icon_that_is_served(client):
    """Regression: without a <link rel="icon">, browsers asked for /favicon.ico, a 404 that
    chromium logs as a console error on every load (found by tests/test_browser.py)."""
    assert '<link rel="icon" href="/static/favicon.svg"' in client.get("/").text
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")


@pytest.mark.parametrize(
    "path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/nope"]
)
def test_no_path_leaves_the_static_folder(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "create_app" not in response.text


def test_openapi_schema_and_docs_page(client):
    schema = client.get("/openapi.json").json()
    assert {
        "/health",
        "/health/live",
        "/api/search",
        "/api/faces/enroll",
        "/api/faces/identify",
        "/api/faces/verify",
        "/api/faces/people",
        "/api/faces/people/{name}",
        "/api/faces/faces/{face}/thumbnail.jpg",
    } <= set(schema["paths"])
    assert schema["paths"]["/api/search"]["get"]["responses"]["422"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "swagger" in client.get("/docs").text.lower()


def test_unknown_routes_and_methods_answer_json(client):
    error(client.get("/api/unknown"), 404, "Not Found")
    error(client.put("/api/search"), 405, "Method Not Allowed")


def test_requests_are_logged_without_their_query(client, caplog):
    with caplog.at_level(logging.INFO, logger="tripletkit.serve"):
        client.get("/api/search", params={"q": "private words"})
    assert any("GET /api/search 200" in r.getMessage() for r in caplog.records)
    assert not any("private" in r.getMessage() for r in caplog.records)


# --- search ------------------------------------------------------------------------------------


def test_search_answers_ids_titles_scores_snippets_and_time(client):
    body = client.get("/api/search", params={"q": "the violin", "k": 3}).json()
    assert body["query"] == "the violin" and body["k"] == 3 and body["took_ms"] >= 0
    first = body["results"][0]
    assert (first["id"], first["title"]) == ("d2", "The violin")
    assert first["snippet"].startswith("all about the violin") and first["snippet"].endswith("…")
    assert len(body["results"]) == 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["note"] is None


def test_batch_search_answers_each_query_like_a_single_one(client):
    body = client.post("/api/search", json={"queries": ["bird", "poem bridge"], "k": 2}).json()
    for query, results in zip(["bird", "poem bridge"], body["results"], strict=True):
        single = client.get("/api/search", params={"q": query, "k": 2}).json()["results"]
        assert results == single


def test_search_without_texts_says_why_there_are_no_snippets(tmp_path):
    config = ServeConfig()
    with local(create_app(config, Services(search_service(texts=False)))) as client:
        body = client.get("/api/search", params={"q": "river"}).json()
    assert body["results"][0]["snippet"] is None
    assert "no texts.json" in body["note"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "query parameter q: Field required"),
        ({"q": ""}, "query parameter q: String should have at least 1 character"),
        ({"q": "   "}, "q is blank"),
        ({"q": "x" * 513}, "query parameter q: String should have at most 512"),
        ({"q": "river", "k": 0}, "query parameter k: Input should be greater than or equal to 1"),
        ({"q": "river", "k": 101}, "query parameter k: Input should be less than or equal to 100"),
        ({"q": "river", "k": "ten"}, "query parameter k: Input should be a valid integer"),
    ],
)
def test_bad_search_queries_are_422_naming_the_parameter(client, params, fragment):
    error(client.get("/api/search", params=params), 422, fragment)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"queries": []}, "body field queries: List should have at least 1 item"),
        ({"queries": ["a"] * 65}, "body field queries: List should have at most 64"),
        ({"queries": "river"}, "body field queries: Input should be a valid list"),
        ({"queries": [3]}, "body field queries.0: Input should be a valid string"),
        ({"queries": ["ok", " "]}, "queries[1] is blank"),
        ({"queries": ["x" * 513]}, "body field queries.0: String should have at most 512"),
        ({"queries": ["river"], "k": 1000}, "body field k: Input should be less than or equal"),
        ({}, "body field queries: Field required"),
    ],
)
def test_bad_batch_searches_are_422_naming_the_field(client, body, fragment):
    error(client.post("/api/search", json=body), 422, fragment)


def test_a_batch_search_that_is_not_json_is_422(client):
    response = client.post(
        "/api/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    error(response, 422, "JSON decode error")


def test_search_without_an_index_is_404_saying_how_to_start_it(tmp_path):
    with make_client(tmp_path, search=False) as client:
        error(client.get("/api/search", params={"q": "x"}), 404, "--index")
        error(client.post("/api/search", json={"queries": ["x"]}), 404, "--index")


def test_the_batcher_joins_concurrent_requests_into_one_encoder_call():
    calls: list[int] = []
    first_call = threading.Event()
    go_on = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        first_call.set()
        go_on.wait(30)
        return bag_of_words(texts)

    batcher = Batcher(encode, max_batch=64)
    results: dict[int, np.ndarray] = {}
    first = threading.Thread(target=lambda: results.setdefault(-1, batcher(["river"])))
    first.start()
    first_call.wait(30)  # the worker is inside the first call; the next 7 queue up meanwhile
    threads = [
        threading.Thread(target=lambda i=i: results.setdefault(i, batcher([WORDS[i]])))
        for i in range(7)
    ]
    for t in threads:
        t.start()
    while batcher._queue.qsize() < 7:
        time.sleep(0.01)
    go_on.set()
    for t in [first, *threads]:
        t.join(30)
    batcher.close()
    assert calls == [1, 7]
    for i in range(7):
        np.testing.assert_allclose(results[i], bag_of_words([WORDS[i]]))


def test_an_encoder_error_reaches_every_caller_of_its_batch():
    def encode(texts: list[str]) -> np.ndarray:
        raise ValueError("encoder broke")

    batcher = Batcher(encode)
    with pytest.raises(ValueError, match="encoder broke"):
        batcher(["x"])
    batcher.close()


def test_search_service_loads_a_folder_written_by_tripletkit_index(tmp_path):
    import json

    from search_fixtures import tiny_encoder

    encoder = tiny_encoder(tmp_path)
    from tripletkit.search.encoder import encode, load_encoder

    model = load_encoder(encoder, 32)
    docs = {f"d{i}": f"the {w} is described here" for i, w in enumerate(WORDS)}
    vectors = encode(model, list(docs.values()), progress=False)
    from tripletkit.search.encodings import model_fingerprint

    spec = {"path": str(encoder), "max_seq_length": 32, "fingerprint": model_fingerprint(model)}
    extra = {
        "encoder.json": json.dumps(spec),
        "titles.json": json.dumps({d: d.upper() for d in docs}),
    }
    Index.build(vectors, list(docs)).save(tmp_path / "index", extra)
    service = SearchService.from_folder(tmp_path / "index")
    try:
        (hits,) = service.search(["the violin is described here"], 2)
    finally:
        service.close()
    assert hits[0].id == "d2" and hits[0].title == "D2" and hits[0].snippet is None
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_search_service_names_a_folder_without_an_encoder(tmp_path):
    Index.build(bag_of_words(["river"]), ["d0"]).save(tmp_path / "index")
    with pytest.raises(ValueError, match="has no encoder.json"):
        SearchService.from_folder(tmp_path / "index")
    (tmp_path / "index" / "encoder.json").write_text("{}")
    with pytest.raises(ValueError, match="expected {path, max_seq_length}"):
        SearchService.from_folder(tmp_path / "index")


def test_snippet_cuts_at_a_word_boundary():
    assert snippet("a  b\n c") == "a b c"
    assert snippet("word " * 100, limit=12) == "word word…"


# --- faces: enroll, identify, verify -----------------------------------------------------------


def test_enroll_then_identify_every_face_of_a_photo(client):
    created = enroll(client, "Red", photo(RED), photo((240, 20, 15)))
    assert created.status_code == 201, created.text
    person = created.json()
    assert person["name"] == "Red" and len(person["faces"]) == 2
    assert person["faces"][0]["box"] == {"left": 0, "top": 0, "right": 32, "bottom": 32}
    assert person["faces"][0]["source"] == "p0.png"
    enroll(client, "Green", photo(GREEN))
    body = identify(client, photo(GREEN, RED, BLUE), k=2).json()
    assert (body["width"], body["height"], body["threshold"]) == (96, 32, 0.2)
    names = [f["decision"] for f in body["faces"]]
    assert names == ["Green", "Red", "unknown"]
    assert body["faces"][2]["name"] is None
    assert [m["name"] for m in body["faces"][0]["matches"]] == ["Green", "Red"]
    assert body["faces"][1]["box"] == {"left": 32, "top": 0, "right": 64, "bottom": 32}
    assert body["faces"][0]["distance"] == pytest.approx(0, abs=1e-3)


def test_identify_a_photo_without_faces_or_on_an_empty_gallery(client):
    assert identify(client, photo(DARK)).json()["faces"] == []
    (face,) = identify(client, photo(RED)).json()["faces"]
    assert face["decision"] == "unknown" and face["matches"] == [] and face["distance"] is None


def test_verify_two_photos(client):
    files = [("image", ("a.png", photo(RED), "image/png")), ("image", ("b.png", photo(RED)))]
    same = client.post("/api/faces/verify", files=files).json()
    assert same["same"] is True and same["distance"] == pytest.approx(0, abs=1e-3)
    files[1] = ("image", ("b.png", photo(BLUE), "image/png"))
    assert client.post("/api/faces/verify", files=files).json()["same"] is False


@pytest.mark.parametrize("count", [1, 3])
def test_verify_needs_exactly_two_photos(client, count):
    files = [("image", (f"{i}.png", photo(RED), "image/png")) for i in range(count)]
    error(
        client.post("/api/faces/verify", files=files),
        422,
        f"exactly 2 photos in 'image', got {count}",
    )


def test_verify_names_the_photo_without_a_face(client):
    files = [("image", ("a.png", photo(RED))), ("image", ("empty.png", photo(DARK)))]
    error(client.post("/api/faces/verify", files=files), 422, "empty.png: no face found")


def test_enroll_is_all_or_nothing_and_names_the_photo_without_a_face(client):
    error(enroll(client, "Red", photo(RED), photo(DARK)), 422, "p1.png: no face found")
    assert client.get("/api/faces/people").json() == []


def test_a_photo_with_several_faces_needs_multiple(client):
    error(enroll(client, "Pair", photo(RED, GREEN)), 422, "p0.png: 2 faces found")
    created = enroll(client, "Pair", photo(RED, GREEN), multiple="true")
    assert created.status_code == 201 and len(created.json()["faces"]) == 2


def test_people_list_get_rename_delete_and_thumbnails(client):
    enroll(client, "Red", photo(RED))
    enroll(client, "Blue", photo(BLUE))
    people = client.get("/api/faces/people").json()
    assert [p["name"] for p in people] == ["Blue", "Red"]
    thumb = client.get(people[1]["faces"][0]["thumbnail"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (96, 96)
    renamed = client.patch("/api/faces/people/Red", json={"name": "Rosso"})
    assert renamed.json()["name"] == "Rosso"
    assert identify(client, photo(RED)).json()["faces"][0]["decision"] == "Rosso"
    error(client.get("/api/faces/people/Red"), 404, "no person named 'Red'")
    error(client.patch("/api/faces/people/Rosso", json={"name": "Blue"}), 409, "exists already")
    assert client.delete("/api/faces/people/Rosso").json() == {"name": "Rosso", "faces": 1}
    error(client.delete("/api/faces/people/Rosso"), 404, "no person named 'Rosso'")
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["Blue"]
    assert client.get("/api/faces/people/Blue").json()["name"] == "Blue"


def test_names_with_odd_characters_stay_names(client):
    assert enroll(client, "...", photo(RED)).status_code == 201
    assert enroll(client, "Zoë & co?#", photo(BLUE)).status_code == 201
    assert client.get("/api/faces/people/...").json()["name"] == "..."
    path = "/api/faces/people/" + quote("Zoë & co?#", safe="")
    assert client.get(path).json()["name"] == "Zoë & co?#"
    error(client.get("/api/faces/people/a%2Fb"), 404, "")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "body field name"),
        ("  ", "name is empty"),
        ("x" * 101, "body field name: String should have at most 100 characters"),
        ("../../etc/passwd", "forbidden character '/'"),
        ("bell\x07", "forbidden character"),
    ],
)
def test_bad_names_are_422(client, name, fragment):
    error(enroll(client, name, photo(RED)), 422, fragment)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({}, "body field name: Field required"), ({"name": "a/b"}, "forbidden character '/'")],
)
def test_bad_renames_are_422(client, body, fragment):
    enroll(client, "Red", photo(RED))
    error(client.patch("/api/faces/people/Red", json=body), 422, fragment)


def gif_bomb() -> bytes:
    """A 1-bit PNG of 10000 x 10000 pixels (past Pillow's bomb limit), 12 kB."""
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "q.png: empty file"),
        (b"GIF89a not really", "q.png: not an image file Pillow can read"),
        (b"%PDF-1.4 a document", "q.png: not an image file Pillow can read"),
        (photo(RED, fmt="JPEG")[:200], "q.png: corrupt or truncated"),
    ],
)
def test_uploads_that_are_not_images_are_422_naming_the_file(client, data, fragment):
    error(identify(client, data), 422, fragment)
    error(enroll(client, "Red", data), 422, fragment.replace("q.png", "p0.png"))


def test_a_decompression_bomb_is_refused(client):
    error(identify(client, gif_bomb()), 422, "decompression bomb")


def test_photos_over_the_pixel_limit_are_refused(tmp_path):
    with make_client(tmp_path, max_pixels=1000) as client:
        error(identify(client, photo(RED, side=40)), 422, "40 x 40 pixels, more than 1000")


def test_uploads_over_the_size_limit_are_413(tmp_path):
    with make_client(tmp_path, max_upload_bytes=2000) as client:
        big = photo(RED, side=400, fmt="BMP")
        error(identify(client, big), 413, "larger than the limit of 2000 bytes")
        chunks = (b"x" * 1000 for _ in range(5))  # no Content-Length: counted as it arrives
        headers = {"content-type": "multipart/form-data; boundary=b"}
        error(client.post("/api/faces/identify", content=chunks, headers=headers), 413, "2000")
        assert identify(client, photo(RED)).status_code == 200


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({}, "body field image: Field required"),
        ({"data": {"k": "3"}}, "body field image: Field required"),
        ({"files": {"other": ("a.png", b"x")}}, "body field image: Field required"),
        ({"content": b"raw", "headers": {"content-type": "image/png"}}, "image: Field required"),
    ],
)
def test_identify_without_an_image_field_is_422(client, request_kwargs, fragment):
    error(client.post("/api/faces/identify", **request_kwargs), 422, fragment)


@pytest.mark.parametrize(
    ("k", "fragment"),
    [(0, "greater than or equal to 1"), (21, "less than or equal to 20"), ("x", "a valid integer")],
)
def test_identify_k_is_bounded(client, k, fragment):
    error(identify(client, photo(RED), k=k), 422, f"query parameter k: Input should be {fragment}")


def test_enroll_without_a_name_or_image_is_422(client):
    error(client.post("/api/faces/enroll", data={"name": "x"}), 422, "body field image")
    files = {"image": ("a.png", photo(RED), "image/png")}
    error(client.post("/api/faces/enroll", files=files), 422, "body field name: Field required")


@pytest.mark.parametrize("face", ["0", "-1", "abc", str(2**63)])
def test_bad_thumbnail_ids_are_422_and_unknown_ones_404(client, face):
    error(client.get(f"/api/faces/faces/{face}/thumbnail.jpg"), 422, "path parameter face")


def test_an_unknown_thumbnail_is_404(client):
    error(client.get("/api/faces/faces/12345/thumbnail.jpg"), 404, "no thumbnail for face 12345")


def test_faces_without_a_gallery_are_404_saying_how_to_start_it(tmp_path):
    with make_client(tmp_path, faces=False) as client:
        error(identify(client, photo(RED)), 404, "--gallery")
        error(client.get("/api/faces/people"), 404, "--gallery")


# --- token -------------------------------------------------------------------------------------


def test_write_endpoints_need_the_token_when_one_is_set(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    error(enroll(guarded, "Red", photo(RED)), 401, "Authorization: Bearer <token>")
    wrong = {"Authorization": "Bearer nope"}
    response = enroll(guarded, "Red", photo(RED), headers=wrong)
    error(response, 401, "wrong token")
    assert response.headers["www-authenticate"] == "Bearer"
    assert enroll(guarded, "Red", photo(RED), headers=auth).status_code == 201
    error(guarded.patch("/api/faces/people/Red", json={"name": "R"}), 401, "Bearer")
    error(guarded.delete("/api/faces/people/Red"), 401, "Bearer")
    assert (
        guarded.patch("/api/faces/people/Red", json={"name": "R"}, headers=auth).status_code == 200
    )
    # reads stay open
    assert identify(guarded, photo(RED)).json()["faces"][0]["decision"] == "R"
    assert guarded.get("/api/faces/people").status_code == 200
    assert guarded.delete("/api/faces/people/R", headers=auth).status_code == 200


def test_without_a_token_writes_are_open(client):
    assert enroll(client, "Red", photo(RED)).status_code == 201


def test_the_default_host_is_localhost():
    import inspect

    from tripletkit.serve.run import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    with pytest.raises(ValueError, match="give an index folder"):
        serve()


# --- persistence and concurrency ---------------------------------------------------------------


def test_the_gallery_survives_a_restart_of_the_service(tmp_path):
    with make_client(tmp_path, search=False) as client:
        enroll(client, "Red", photo(RED))
    with make_client(tmp_path, search=False) as client:
        assert identify(client, photo(RED)).json()["faces"][0]["decision"] == "Red"


def answer_within(request, seconds: float = 60):  # noqa: ANN001, ANN201
    """``request()`` run in a thread: a hang fails the test instead of stalling the run."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(request).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def test_a_request_after_the_app_shut_down_is_503_not_a_hang(tmp_path):
    """Regression: the lifespan's end closed the services but left them in place, so a later
    request (schemathesis ends the lifespan after each test) waited forever on the stopped
    search batcher."""
    app = make_client(tmp_path).app
    with local(app):
        pass  # the lifespan starts and ends: the services are closed
    late = local(app)  # no lifespan
    error(answer_within(lambda: late.get("/api/search", params={"q": "river"})), 503, "shut down")
    error(late.get("/api/faces/people"), 503, "shut down")
    stopped = late.get("/health")
    assert (stopped.status_code, stopped.json()["status"]) == (503, "stopped")


def test_a_closed_batcher_refuses_instead_of_waiting_forever():
    batcher = Batcher(bag_of_words)
    np.testing.assert_allclose(batcher(["river"]), bag_of_words(["river"]))
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        answer_within(lambda: batcher(["river"]))
    batcher.close()  # twice is fine


def test_a_loader_loads_again_when_the_lifespan_restarts():
    loaded: list[Services] = []

    def loader() -> Services:
        loaded.append(Services(search_service(), None))
        return loaded[-1]

    app = create_app(ServeConfig(), loader)
    for round_ in (1, 2):
        with local(app) as client:  # noqa: B023 - each round's client, used within it
            for _ in range(300):  # the loader runs in a background thread
                if client.get("/health").status_code == 200:
                    break
                time.sleep(0.05)
            assert len(loaded) == round_  # loaded again, not the closed services of round 1
            found = answer_within(lambda: client.get("/api/search", params={"q": "river"}))
            assert found.status_code == 200


def test_concurrent_requests_are_all_answered(client):
    enroll(client, "Red", photo(RED))
    failures: list[str] = []

    def work(i: int) -> None:
        for _ in range(5):
            r = client.get("/api/search", params={"q": WORDS[i % len(WORDS)], "k": 1})
            if r.json()["results"][0]["id"] != f"d{i % len(WORDS)}":
                failures.append(r.text)
            if i % 2 == 0:
                created = enroll(client, f"p{i}", photo((i * 20, 100, 200)))
                if created.status_code != 201:
                    failures.append(created.text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(client.get("/api/faces/people").json()) == 5


# --- the real models ---------------------------------------------------------------------------


def real_photos() -> dict[str, Path]:
    from photos import default_folder

    folder = default_folder()
    paths = {n: folder / n for n in ("obama.jpg", "obama2.jpg", "biden.jpg")}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip(f"the test photos are not in {folder} (python tests/photos.py fetches them)")
    return paths


def test_real_detector_and_dlib_model_identify_the_enrolled_person(tmp_path):
    pytest.importorskip("dlib")
    paths = real_photos()
    config = ServeConfig(gallery=tmp_path / "gallery")
    with local(create_app(config)) as client:
        for _ in range(1200):  # the dlib model loads in the background
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/health").json()["faces"] is True
        data = {n: p.read_bytes() for n, p in paths.items()}
        files = {"image": ("obama.jpg", data["obama.jpg"], "image/jpeg")}
        created = client.post("/api/faces/enroll", data={"name": "Obama"}, files=files)
        assert created.status_code == 201, created.text
        found = identify(client, data["obama2.jpg"], "obama2.jpg").json()
        assert [f["decision"] for f in found["faces"]] == ["Obama"]
        from tripletkit.faces.models import STOCK_THRESHOLD

        assert found["threshold"] == pytest.approx(STOCK_THRESHOLD)
        assert found["faces"][0]["distance"] < STOCK_THRESHOLD
        other = identify(client, data["biden.jpg"], "biden.jpg").json()
        assert [f["decision"] for f in other["faces"]] == ["unknown"]
        files2 = [("image", ("a.jpg", data["obama.jpg"])), ("image", ("b.jpg", data["biden.jpg"]))]
        assert client.post("/api/faces/verify", files=files2).json()["same"] is False


def test_an_unexpected_error_is_a_json_500_and_logged(tmp_path, caplog):
    def broken_detect(image):
        raise RuntimeError("detector crashed")

    gallery = Gallery.open(tmp_path / "g", 4)
    services = Services(None, FaceService(gallery, FakeModel(), broken_detect))
    app = create_app(ServeConfig(), services)
    client = local(app, raise_server_exceptions=False)
    with client, caplog.at_level(logging.ERROR, logger="tripletkit.serve"):
        error(identify(client, photo(RED)), 500, "internal error (RuntimeError)")
    assert "detector crashed" in caplog.text


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_request(port: int, data: bytes) -> str:
    """What the server at ``port`` answers to ``data`` sent as is (httpx refuses to send
    URLs that long), until it closes the connection."""
    import select
    import socket

    data += b"Host: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        for start in range(0, len(data), 4096):  # until the server answers (then it closes)
            if select.select([raw], [], [], 0.05)[0]:
                break
            raw.sendall(data[start : start + 4096])
        chunks = []
        while chunk := raw.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def test_serve_starts_uvicorn_on_localhost_with_the_token_from_the_environment(tmp_path):
    """The function `tripletkit serve` calls, in a real process, over a real socket."""
    import os
    import subprocess
    import sys

    import httpx

    port = free_port()
    code = f"from tripletkit.serve import serve; serve(gallery_dir={str(tmp_path)!r}, port={port})"
    env = {**os.environ, "TRIPLETKIT_SERVE_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert f"http://127.0.0.1:{port}/" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # up while the dlib model loads, then ready
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert httpx.get(f"{url}/health").json()["faces"] is True
        files = {"image": ("a.png", photo(RED), "image/png")}
        denied = httpx.post(f"{url}/api/faces/enroll", data={"name": "x"}, files=files)
        error(denied, 401, "Bearer")
        # what uvicorn refuses itself is JSON too (issue 20, item 7): a 200 kB query string,
        # and a request that is not HTTP
        huge = raw_request(port, b"GET /api/search?q=" + b"x" * 200_000 + b" HTTP/1.1\r\n")
        assert huge.startswith("HTTP/1.1 431 ") and "content-type: application/json" in huge.lower()
        assert "longer than 16384 bytes" in huge
        garbage = raw_request(port, b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.startswith("HTTP/1.1 400 ")
        assert "content-type: application/json" in garbage.lower()
        assert '"detail": "malformed HTTP request"' in garbage
    finally:
        server.terminate()
        server.wait(timeout=30)
        log = server.stdout.read() if server.stdout is not None else ""
        if server.stdout is not None:
            server.stdout.close()
    assert "tripletkit.serve POST /api/faces/enroll 401" in log


def test_a_trained_model_folder_serves_with_its_calibrated_threshold(tmp_path):
    from tripletkit.faces.config import FacesConfig
    from tripletkit.faces.models import save_model, scratch_network
    from tripletkit.serve.app import load_services

    cfg = FacesConfig()
    thresholds = {"threshold": 0.8, "cluster_threshold": 1.0}
    save_model(tmp_path / "model", scratch_network(cfg), cfg, thresholds, kind="scratch")
    services = load_services(ServeConfig(gallery=tmp_path / "gallery", model=tmp_path / "model"))
    try:
        assert services.search is None and services.faces is not None
        assert services.faces.threshold == 0.8
        assert services.faces.gallery.dim == cfg.model.dim
        services.faces.detect = fake_detect
        (face,) = services.faces.photo_faces(photo(RED), "red.png").faces
        assert face.embedding.shape == (cfg.model.dim,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1, abs=1e-5)
    finally:
        services.close()
    with pytest.raises(ValueError, match="nor a model folder"):
        load_services(ServeConfig(gallery=tmp_path / "g2", model=tmp_path / "missing"))


def test_enroll_folder_enrolls_one_face_per_photo_of_each_person(tmp_path):
    for person, colour in (("red", RED), ("blue", BLUE), ("dark", DARK)):
        (tmp_path / "people" / person).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "people" / person / f"{i}.png").write_bytes(photo(colour))
    (tmp_path / "people" / "README").write_text("not a person")
    whole = lambda image: fake_detect(Image.new("RGB", (8, 8), (90, 90, 90)))  # noqa: E731
    with Gallery.open(tmp_path / "gallery", 4) as gallery:
        service = FaceService(gallery, FakeModel(), fake_detect)
        done = service.enroll_folder(tmp_path / "people", per_person=2, fallback=whole)
        assert done == {"blue": 2, "dark": 2, "red": 2}
        found = service.identify(photo(RED), "q.png", k=1)[1]
        assert [f.name for f in found] == ["red"]
        assert gallery.person("red").faces[0].source == "0.png"
    with Gallery.open(tmp_path / "g2", 4) as other, pytest.raises(ValueError, match="sub-folders"):
        FaceService(other, FakeModel(), fake_detect).enroll_folder(tmp_path / "people" / "red")


def test_a_lone_surrogate_from_json_is_422_not_an_encoder_crash(client):
    raw = b'{"queries": ["river", "\\ud800"]}'
    response = client.post("/api/search", content=raw, headers={"content-type": "application/json"})
    error(response, 422, "body field queries.1: Input should be a valid string")
    enroll(client, "Red", photo(RED))
    raw = b'{"name": "\\udc80x"}'
    response = client.patch(
        "/api/faces/people/Red", content=raw, headers={"content-type": "application/json"}
    )
    error(response, 422, "body field name: Input should be a valid string")


def test_a_request_the_encoder_refuses_fails_alone_in_its_batch():
    first_call = threading.Event()
    go_on = threading.Event()

    def encode(texts: list[str]) -> np.ndarray:
        first_call.set()
        go_on.wait(30)
        if "bad" in texts:
            raise ValueError("cannot encode 'bad'")
        return bag_of_words(texts)

    batcher = Batcher(encode)
    results: dict[str, object] = {}

    def ask(text: str) -> None:
        try:
            results[text] = batcher([text])
        except ValueError as err:
            results[text] = err

    first = threading.Thread(target=ask, args=("river",))
    first.start()
    first_call.wait(30)
    others = [threading.Thread(target=ask, args=(t,)) for t in ("bad", "bird")]
    for t in others:
        t.start()
    while batcher._queue.qsize() < 2:
        time.sleep(0.01)
    go_on.set()
    for t in [first, *others]:
        t.join(30)
    batcher.close()
    assert isinstance(results["bad"], ValueError)
    np.testing.assert_allclose(results["bird"], bag_of_words(["bird"]))
    np.testing.assert_allclose(results["river"], bag_of_words(["river"]))


# --- fuzz: no request is a 5xx -----------------------------------------------------------------


FIXTURE = [HealthCheck.function_scoped_fixture]
HEADS = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff"]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    with make_client(tmp_path_factory.mktemp("fuzz"), token=TOKEN) as c:
        enroll(c, "Red", photo(RED), headers={"Authorization": f"Bearer {TOKEN}"})
        yield c


def no_5xx(response) -> int:
    """The status, after checking it is not a 5xx and that an error is JSON with a message."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["detail"], response.text
    return response.status_code


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(q=st.text(max_size=600), k=st.one_of(st.integers(-5, 200), st.text(max_size=5)))
def test_fuzzed_searches_are_never_5xx(fuzz_client, q, k):
    no_5xx(fuzz_client.get("/api/search", params={"q": q, "k": k}))
    no_5xx(fuzz_client.post("/api/search", json={"queries": [q], "k": k}))


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(name=st.text(max_size=120), new=st.text(max_size=120))
def test_fuzzed_names_are_never_5xx(fuzz_client, name, new):
    path = "/api/faces/people/" + quote(name, safe="")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    no_5xx(fuzz_client.get(path))
    renamed = fuzz_client.patch(path, json={"name": new}, headers=auth)
    if no_5xx(renamed) == 200:  # put it back for the next example
        back = "/api/faces/people/" + quote(renamed.json()["name"], safe="")
        assert fuzz_client.patch(back, json={"name": "Red"}, headers=auth).status_code == 200
    no_5xx(fuzz_client.delete(path + "x", headers=auth))
    assert [p["name"] for p in fuzz_client.get("/api/faces/people").json()] == ["Red"]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(data=st.binary(max_size=2000), head=st.sampled_from(HEADS))
def test_fuzzed_uploads_are_never_5xx(fuzz_client, data, head):
    assert no_5xx(identify(fuzz_client, head + data)) in (200, 422)


# --- issue 20: the service under hostile input -------------------------------------------------
# item 1: memory and CPU amplification (the burst itself: tests/serve/test_limits.py)


def blocking_service(tmp_path: Path, **limits):  # noqa: ANN201
    """A client whose detector blocks until ``release`` is set, with ``entered`` set once a
    photo is in the detector."""
    entered, release = threading.Event(), threading.Event()

    def detect(image: Image.Image) -> list[FakeFace]:
        entered.set()
        release.wait(60)
        return fake_detect(image)

    config = ServeConfig(**limits)
    gallery = Gallery.open(tmp_path / "gallery", 4)
    services = Services(None, FaceService(gallery, FakeModel(), detect))
    return local(create_app(config, services)), entered, release


def test_a_full_photo_queue_answers_503_with_retry_after_and_runs_the_rest(tmp_path):
    client, entered, release = blocking_service(tmp_path, photo_workers=1, photo_queue=1)
    answers: dict[str, int] = {}
    with client:
        queue = client.app.state.photo_queue
        first = threading.Thread(
            target=lambda: answers.setdefault("a", identify(client, photo(RED)).status_code)
        )
        first.start()
        assert entered.wait(60)  # the one worker is busy
        second = threading.Thread(
            target=lambda: answers.setdefault("b", identify(client, photo(RED)).status_code)
        )
        second.start()
        wait_for(lambda: queue.queued() == 1, "the second photo waiting")
        refused = identify(client, photo(RED))
        error(refused, 503, "busy")
        assert int(refused.headers["retry-after"]) >= 1
        error(enroll(client, "Ada", photo(RED)), 503, "busy")
        release.set()
        first.join(60)
        second.join(60)
    assert answers == {"a": 200, "b": 200}  # the queued one was answered, not dropped


def test_a_large_photo_is_decoded_at_detection_size_with_boxes_in_its_own_pixels(tmp_path):
    from tripletkit.serve.faces import DECODE_SIDE

    seen: list[tuple[int, int]] = []

    def spy(image: Image.Image) -> list[FakeFace]:
        seen.append(image.size)
        return fake_detect(image)

    gallery = Gallery.open(tmp_path / "gallery", 4)
    services = Services(None, FaceService(gallery, FakeModel(), spy))
    with local(create_app(ServeConfig(), services)) as client:
        big = photo(RED, GREEN, BLUE, RED, side=1000)  # 4000 x 1000
        body = identify(client, big).json()
    assert seen == [(2000, 500)]  # reduced by 2: what the detector was given
    assert max(seen[0]) <= DECODE_SIDE
    assert (body["width"], body["height"]) == (4000, 1000)
    boxes = [f["box"] for f in body["faces"]]
    assert boxes == [{"left": 1000 * i, "top": 0, "right": 1000 * (i + 1), "bottom": 1000}
                     for i in range(4)]  # fmt: skip


def test_a_jpeg_is_decoded_at_a_reduced_dct_scale_and_turned_upright(monkeypatch):
    from PIL import JpegImagePlugin

    from tripletkit.serve.faces import DECODE_SIDE, decode_photo

    scales: list[int] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # noqa: ANN001, ANN202
        found = real(self, mode, size)
        scales.append(self.decoderconfig[0] if self.decoderconfig else 1)
        return found

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    image = Image.new("RGB", (8000, 2000), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated: the upright photo is 2000 x 8000
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    decoded = decode_photo(out.getvalue(), "tall.jpg")
    assert scales[0] == 2  # 4000 x 1000 decoded, not 8000 x 2000
    assert (decoded.width, decoded.height) == (2000, 8000)
    assert decoded.image.size == (500, 2000) and decoded.image.mode == "RGB"  # and reduced
    assert max(decoded.image.size) <= DECODE_SIDE


def test_the_default_pixel_cap_refuses_a_40_megapixel_png_before_decoding(client):
    out = io.BytesIO()
    Image.new("1", (6300, 6300)).save(out, format="PNG")  # 40 megapixels in a few kB
    error(identify(client, out.getvalue()), 422, "6300 x 6300 pixels, more than 25000000")


def test_an_enrollment_holds_a_bounded_number_of_photos(client, tmp_path):
    error(enroll(client, "Ada", *[photo(RED)] * 11), 422, "at most 10 photos in one enrollment")
    with make_client(tmp_path / "few", max_enroll_photos=2) as few:
        error(enroll(few, "Ada", *[photo(RED)] * 3), 422, "body field image: at most 2 photos")
        assert few.get("/api/faces/people").json() == []
        assert enroll(few, "Ada", photo(RED), photo(RED)).status_code == 201


# item 2: cross-site writes and foreign Host names


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"},  # another port
        {"Origin": "http://evil.example"},  # a browser that sends no Sec-Fetch-Site
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},  # a sandboxed frame
    ],
)
def test_a_write_from_a_page_of_another_origin_is_refused(client, headers):
    error(enroll(client, "Mallory", photo(RED), headers=headers), 403, "from another site")
    assert client.get("/api/faces/people").json() == []
    enroll(client, "Ada", photo(RED))
    error(client.delete("/api/faces/people/Ada", headers=headers), 403, "from another site")
    patch = client.patch("/api/faces/people/Ada", json={"name": "M"}, headers=headers)
    error(patch, 403, "from another site")
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["Ada"]


def test_the_pages_own_writes_and_clients_that_are_not_browsers_get_through(client):
    own = {"Origin": BASE_URL, "Sec-Fetch-Site": "same-origin"}
    assert enroll(client, "Ada", photo(RED), headers=own).status_code == 201
    assert enroll(client, "Bob", photo(BLUE), headers={"Origin": BASE_URL}).status_code == 201
    assert enroll(client, "Cy", photo(GREEN)).status_code == 201  # curl sends neither header


def test_an_origin_listed_for_a_proxy_may_write(tmp_path):
    origin = {"Origin": "https://faces.example.org", "Sec-Fetch-Site": "cross-site"}
    with make_client(tmp_path, allowed_origins=("https://faces.example.org",)) as client:
        assert enroll(client, "Ada", photo(RED), headers=origin).status_code == 201


@pytest.mark.parametrize("path", ["/api/faces/people", "/health", "/", "/api/search?q=river"])
def test_a_foreign_host_name_is_refused(client, path):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: it must not read a thing."""
    response = client.get(path, headers={"Host": "rebind.evil.example:8000"})
    error(response, 400, "is not a name of this service")


def test_the_names_of_the_service_are_answered(tmp_path):
    with make_client(tmp_path, allowed_hosts=("faces.example.org",)) as client:
        assert client.get("/health", headers={"Host": "faces.example.org"}).status_code == 200
        error(client.get("/health", headers={"Host": "localhost:8000"}), 400, "--allowed-host")
    with make_client(tmp_path / "b") as client:
        for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST."):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host


# item 3: reads of the faces, security headers

READ_TOKEN = "r3ad-token"


def test_reads_of_the_faces_need_a_token_when_a_read_token_is_set(tmp_path):
    writer = {"Authorization": f"Bearer {TOKEN}"}
    reader = {"Authorization": f"Bearer {READ_TOKEN}"}
    with make_client(tmp_path, token=TOKEN, read_token=READ_TOKEN) as client:
        thumb = enroll(client, "Red", photo(RED), headers=writer).json()["faces"][0]["thumbnail"]
        reads = [
            lambda h: client.get("/api/faces/people", headers=h),
            lambda h: client.get("/api/faces/people/Red", headers=h),
            lambda h: client.get(thumb, headers=h),
            lambda h: identify(client, photo(RED), headers=h),
            lambda h: verify(client, photo(RED), photo(RED), headers=h),
        ]
        for read in reads:
            error(read(None), 401, "Authorization: Bearer <token>")
            error(read({"Authorization": "Bearer nope"}), 401, "wrong token")
            assert read(reader).status_code == 200
            assert read(writer).status_code == 200  # the write token reads too
        error(enroll(client, "Blue", photo(BLUE), headers=reader), 401, "wrong token")
        assert client.get("/api/search", params={"q": "river"}).status_code == 200  # the corpus
        assert client.get("/health").json()["status"] == "ready"


def test_the_page_and_every_answer_carry_security_headers(client):
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    for part in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"):
        assert part in policy
    assert "unsafe-inline" not in policy
    others = [client.get(path) for path in ("/api/faces/people", "/nope", "/static/app.js")]
    for response in (page, *others):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cross-origin-resource-policy"] == "same-origin"
        assert response.headers["referrer-policy"] == "no-referrer"


# item 4: retries


def test_an_enrollment_retried_with_its_idempotency_key_is_stored_once(tmp_path):
    key = {"Idempotency-Key": "enroll-ada-1"}
    with make_client(tmp_path, search=False) as client:
        first = enroll(client, "Ada", photo(RED), photo(RED), headers=key)
        again = enroll(client, "Ada", photo(RED), photo(RED), headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert len(client.get("/api/faces/people/Ada").json()["faces"]) == 2
    with make_client(tmp_path, search=False) as client:  # the gallery recorded the key
        replay = enroll(client, "Ada", photo(RED), photo(RED), headers=key)
        assert replay.headers["idempotent-replayed"] == "true"
        assert len(client.get("/api/faces/people/Ada").json()["faces"]) == 2
        assert len(enroll(client, "Ada", photo(RED)).json()["faces"]) == 3  # no key: added


def test_an_idempotency_key_reused_for_another_request_is_422(client):
    key = {"Idempotency-Key": "k-1"}
    assert enroll(client, "Ada", photo(RED), headers=key).status_code == 201
    error(enroll(client, "Ada", photo(BLUE), headers=key), 422, "used for another enrollment")
    error(enroll(client, "Bob", photo(RED), headers=key), 422, "used for another enrollment")
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["Ada"]


@pytest.mark.parametrize("key", ["", "x" * 201, "has space"])
def test_a_malformed_idempotency_key_is_422_naming_the_header(client, key):
    response = enroll(client, "Ada", photo(RED), headers={"Idempotency-Key": key})
    error(response, 422, "Idempotency-Key")
    assert client.get("/api/faces/people").json() == []


def test_an_enrollment_whose_client_has_gone_is_not_stored(tmp_path):
    """The client gave up (disconnected) while the faces were computed: storing them would
    surprise it, and its retry would enroll them twice."""
    import anyio
    import httpx

    gallery = Gallery.open(tmp_path / "gallery", 4)
    app = create_app(ServeConfig(), Services(None, FaceService(gallery, FakeModel(), fake_detect)))
    files = [("image", ("a.png", photo(RED), "image/png"))]
    request = httpx.Request(
        "POST", f"{BASE_URL}/api/faces/enroll", data={"name": "Ada"}, files=files
    )
    body = request.read()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/faces/enroll", "raw_path": b"/api/faces/enroll",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode()),
                    (b"content-type", request.headers["content-type"].encode())],
    }  # fmt: skip
    anyio.run(app, scope, receive, send)
    assert gallery.people() == []
    assert sent[0]["status"] == 499
    gallery.close()


# item 5: logs


def test_the_log_names_the_route_and_escapes_what_the_client_sent(client, caplog):
    enroll(client, "Secret Name", photo(RED))
    with caplog.at_level(logging.INFO, logger="tripletkit.serve"):
        assert client.get("/api/faces/people/Secret%20Name").status_code == 200
        client.get("/api/faces/people/x%0A2026-01-01 forged 200")
        client.get("/nowhere%0Aforged line")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("GET /api/faces/people/{name} 200")
    assert lines[2].startswith("GET - 404")
    assert not any("Secret" in line or "forged" in line or "\n" in line for line in lines)


def test_printable_escapes_control_characters():
    from tripletkit.serve.middleware import printable

    assert printable("GET\n/x\x1b[31m\u2028") == "GET\\n/x\\x1b[31m\\u2028"
    assert printable("/api/faces/people/{name}") == "/api/faces/people/{name}"


# item 6: names


@pytest.mark.parametrize("name", [".", "..", " .. ", "．．"])
def test_dot_names_are_refused_as_urls_drop_them(client, name):
    error(enroll(client, name, photo(RED)), 422, "dropped from URLs")
    enroll(client, "Ada", photo(RED))
    error(client.patch("/api/faces/people/Ada", json={"name": name}), 422, "dropped from URLs")
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["Ada"]


def test_names_that_differ_in_case_or_width_are_one_person(client):
    assert enroll(client, "s1", photo(RED)).json()["name"] == "s1"
    assert len(enroll(client, "S1", photo(RED)).json()["faces"]) == 2
    assert enroll(client, "Ｓ１", photo(RED)).json()["name"] == "s1"  # fullwidth
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["s1"]
    assert client.get("/api/faces/people/" + quote("Ｓ１")).json()["name"] == "s1"
    enroll(client, "s2", photo(BLUE))
    taken = client.patch("/api/faces/people/s2", json={"name": "S1"})
    error(taken, 409, "a person named 's1' exists already")
    assert client.patch("/api/faces/people/s1", json={"name": "S1"}).json()["name"] == "S1"
    assert identify(client, photo(RED)).json()["faces"][0]["decision"] == "S1"
    assert client.delete("/api/faces/people/s1").json() == {"name": "S1", "faces": 3}


def test_people_are_listed_by_name_regardless_of_case(client):
    for name, colour in (("bob", BLUE), ("Cy", GREEN), ("Ada", RED)):
        enroll(client, name, photo(colour))
    assert [p["name"] for p in client.get("/api/faces/people").json()] == ["Ada", "bob", "Cy"]


def test_the_name_limit_is_the_same_everywhere(client):
    from tripletkit.serve.gallery import MAX_NAME_CHARS

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    form = next(s for n, s in schemas.items() if n.startswith("Body_enroll"))
    rename = schemas["Rename"]["properties"]["name"]["maxLength"]
    lengths = {form["properties"]["name"]["maxLength"], rename}
    assert lengths == {MAX_NAME_CHARS} == {100}
    assert f'maxlength="{MAX_NAME_CHARS}"' in client.get("/").text
    enroll(client, "Ada", photo(RED))
    too_long = "x" * 101
    error(enroll(client, too_long, photo(RED)), 422, "at most 100 characters")
    rename = client.patch("/api/faces/people/Ada", json={"name": too_long})
    error(rename, 422, "at most 100 characters")
    error(client.get(f"/api/faces/people/{too_long}"), 422, "101 characters, more than 100")


# item 7: docs, methods, schema, encodings, two images


def test_the_api_docs_come_from_the_package_without_a_cdn(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "//" not in page.text.replace("<!doctype html>", "")  # no URL of another host
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {"/docs/swagger-ui/swagger-ui-bundle.js", "/docs/swagger-ui/swagger-ui.css"} <= set(
        assets
    )
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert "'unsafe-inline'" in page.headers["content-security-policy"]  # Swagger UI's styles
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not offered


def test_identify_refuses_two_image_parts_instead_of_using_the_last(client):
    enroll(client, "Red", photo(RED))
    files = [
        ("image", ("a.png", photo(BLUE), "image/png")),
        ("image", ("b.png", photo(RED), "image/png")),
    ]
    error(client.post("/api/faces/identify", files=files), 422, "body field image: give it once")
    twice = client.post("/api/faces/enroll", data={"name": ["A", "B"]}, files=files[:1])
    error(twice, 422, "body field name: give it once, got 2")


def test_options_and_head_answer_and_405_lists_every_method(client):
    options = client.options("/api/search")
    assert (options.status_code, options.headers["allow"]) == (204, "GET, HEAD, OPTIONS, POST")
    assert "access-control-allow-origin" not in options.headers
    person = client.options("/api/faces/people/Ada").headers["allow"]
    assert person == "DELETE, GET, HEAD, OPTIONS, PATCH"
    error(client.options("/nowhere"), 404, "Not Found")
    head = client.head("/api/search", params={"q": "river"})
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == "application/json"
    for path in ("/", "/health", "/static/app.js", "/docs"):
        assert client.head(path).status_code == 200, path
    wrong = client.put("/api/search")
    error(wrong, 405, "Method Not Allowed")
    assert wrong.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    error(client.post("/api/faces/people"), 405, "Method Not Allowed")


def test_the_schema_declares_bearer_security_only_when_there_is_a_token(tmp_path):
    with make_client(tmp_path / "open") as client:
        schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert not [op for ops in schema["paths"].values() for op in ops.values() if "security" in op]
    with make_client(tmp_path / "guarded", token=TOKEN) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/faces/enroll"]["post"]["security"]
    assert "security" not in schema["paths"]["/api/faces/people"]["get"]  # reads stay open


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("/api/search?q=%FF%FEriver", "query parameter q: not valid UTF-8"),
        ("/api/search?k=3&q=caf%C3", "query parameter q: not valid UTF-8"),
        ("/api/faces/people/%FF", "path parameter: not valid UTF-8"),
        ("/api/search?q=river&q=bird", "query parameter q: given more than once"),
        ("/api/search?q=river&k=1&k=2", "query parameter k: given more than once"),
    ],
)
def test_query_strings_and_paths_that_are_not_utf8_or_repeat_a_parameter_are_422(
    client, url, fragment
):
    error(client.get(url), 422, fragment)


# item 8: the index builds while faces are answered


def test_faces_are_answered_while_the_index_builds_and_health_shows_its_progress(
    tmp_path, monkeypatch
):
    from search_fixtures import make_beir, tiny_encoder

    import tripletkit.search.indexing as indexing
    import tripletkit.serve.search as serve_search
    from tripletkit.serve.search import IndexBuild

    beir, encoder = make_beir(tmp_path / "beir"), tiny_encoder(tmp_path)
    monkeypatch.setattr(indexing, "PROGRESS_CHUNK", 10)
    reached, release = threading.Event(), threading.Event()
    real = serve_search.index_corpus

    def held(*args, on_progress, **kwargs):  # noqa: ANN002, ANN003, ANN202
        def report(done: int, total: int) -> None:
            on_progress(done, total)
            if done == 10:  # hold the build here until the test has looked
                reached.set()
                release.wait(60)

        return real(*args, on_progress=report, **kwargs)

    monkeypatch.setattr(serve_search, "index_corpus", held)
    config = ServeConfig(
        index=tmp_path / "index",
        gallery=tmp_path / "gallery",
        build=IndexBuild(data=str(beir), encoder=str(encoder)),
    )
    monkeypatch.setattr(  # the stand-in face model, in the part's own loading thread
        "tripletkit.serve.app.load_faces",
        lambda config: FaceService(Gallery.open(config.gallery, 4), FakeModel(), fake_detect),
    )
    with local(create_app(config)) as client:
        assert reached.wait(120)
        wait_for(lambda: client.get("/health").json()["faces"], "the faces loaded")
        health = client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "loading" and body["faces"] is True and body["search"] is False
        assert body["parts"]["search"] == {
            "status": "building",
            "detail": "encoding the corpus: 10 of 36 documents (27%)",
            "done": 10,
            "total": 36,
        }
        assert "search: building (encoding the corpus: 10 of 36" in body["detail"]
        assert enroll(client, "Red", photo(RED)).status_code == 201  # faces meanwhile
        assert identify(client, photo(RED)).json()["faces"][0]["decision"] == "Red"
        waiting = client.get("/api/search", params={"q": "violin"})
        error(waiting, 503, "the search index is being built (encoding the corpus: 10 of 36")
        assert waiting.headers["retry-after"] == "10"
        release.set()
        wait_for(lambda: client.get("/health").status_code == 200, "the index built", 120)
        from tripletkit.search.data import load_beir

        corpus = load_beir(beir).corpus
        text = corpus.texts[corpus.ids.index("d2-1")]  # a document finds itself
        found = client.get("/api/search", params={"q": text, "k": 1}).json()
        assert found["results"][0]["id"] == "d2-1"
    assert (tmp_path / "index" / "meta.json").is_file()


# item 11: an index whose encoder changed


def test_the_service_refuses_an_index_whose_encoder_was_retrained(tmp_path):
    import shutil

    from search_fixtures import make_beir, tiny_encoder
    from sentence_transformers import SentenceTransformer

    from tripletkit.search.config import EncoderConfig, SearchConfig
    from tripletkit.search.data import load_beir
    from tripletkit.search.encoder import load_encoder
    from tripletkit.search.indexing import index_corpus

    beir = make_beir(tmp_path / "beir")
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder(tmp_path), encoder)
    cfg = SearchConfig(model=EncoderConfig(max_seq_length=32))
    index = tmp_path / "index"
    model = load_encoder(encoder, 32)
    index_corpus(model, load_beir(beir), cfg, index, encoder_path=str(encoder), progress=False)
    SearchService.from_folder(index).close()  # as built: fine
    retrained = SentenceTransformer(str(encoder), device="cpu")
    with torch.no_grad():
        next(iter(retrained.parameters())).add_(0.01)
    retrained.save(str(encoder))
    with pytest.raises(ValueError, match="changed since this index was built"):
        SearchService.from_folder(index)
    with local(create_app(ServeConfig(index=index))) as client:
        wait_for(lambda: client.get("/health").json()["status"] == "failed", "the load to fail")
        error(client.get("/api/search", params={"q": "x"}), 503, "changed since this index")


def test_serve_stops_with_the_error_when_the_gallery_is_held_by_another_process(tmp_path):
    """Issue 20, item 7: it stayed up answering 503 "failed" forever."""
    import subprocess
    import sys

    pytest.importorskip("dlib")
    command = [sys.executable, "-m", "tripletkit", "serve", "--gallery", str(tmp_path / "g")]
    with Gallery.open(tmp_path / "g", 128):
        result = subprocess.run(  # before the fix it ran on, answering 503: killed at 120 s
            [*command, "--port", str(free_port())], capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2
    assert "loading failed, the service stopped" in result.stderr
    assert "open in another process" in result.stderr


def test_serve_from_the_command_line_refuses_an_index_folder_without_an_index(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "tripletkit", "serve", "--index", str(tmp_path / "none")]
    result = subprocess.run(
        [*command, "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "http://" not in result.stdout  # never bound the port
    assert "holds no index (no meta.json)" in result.stderr
