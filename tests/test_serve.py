"""The search service (lsb_mm.serving) through FastAPI's TestClient: every endpoint, and every class
of bad request answered with a 4xx JSON message (never a 500)."""
import base64
import io
import json
import os

import pytest

import helpers
from conftest import need

for _module in ("fastapi", "httpx", "python_multipart", "uvicorn"):
    try:
        __import__(_module)
    except ImportError:
        need(False, f"{_module} not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import lsb_mm
    from lsb_mm.cli import main
    from lsb_mm.serving.service import SearchService

    w = tmp_path_factory.mktemp("serve")
    model = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    model.save_pretrained(str(w / "m"))
    helpers.write_jsonl(w / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i} about {t}"}
                                               for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds"])])
    helpers.labelled_folder(str(w / "imgs"), per_class=2)
    for argv in (["index", "--model", str(w / "m"), "--corpus", str(w / "corpus.jsonl"), "--output", str(w / "text.index"), "-q"],
                 ["index", "--model", str(w / "m"), "--images", str(w / "imgs"), "--output", str(w / "img.index"), "-q"]):
        assert main(argv) == 0
    model = lsb_mm.load_model(str(w / "m"))
    return w, SearchService(model, {"text": str(w / "text.index"), "img": str(w / "img.index")})


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    return TestClient(create_app(served[1], max_body=1 << 20), raise_server_exceptions=False)


def b64_png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["heads"]["text"] == "slr" and info["indexes"]["text"]["count"] == 5
    assert info["indexes"]["img"]["factory"] == "Flat" and info["fingerprint"]


def test_text_search_returns_ids_scores_metadata(client, served):
    r = client.post("/search", json={"index": "text", "text": "document 2 about rivers", "k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["thumbnail"] is None for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert len(client.post("/search", json={"index": "text", "text": "x", "k": 999}).json()["hits"]) == 5  # capped


def test_image_search_json_and_upload_find_the_image_first(client, served):
    from PIL import Image

    from lsb_mm.data.images import list_image_files

    w, _ = served
    path = list_image_files(str(w / "imgs"))[3]
    img = Image.open(path).convert("RGB")
    r = client.post("/search", json={"index": "img", "image": b64_png(img), "k": 2, "role": "document"})
    assert r.status_code == 200, r.text
    first = r.json()["hits"][0]
    assert first["metadata"]["path"] == os.path.abspath(path) and first["thumbnail"].endswith("/thumbnail")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    up = client.post("/search", data={"index": "img", "k": "2", "role": "document"},
                     files={"image": ("q.png", buf.getvalue(), "image/png")})
    assert up.status_code == 200 and up.json()["hits"][0]["id"] == first["id"]
    thumb = client.get(first["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    item = client.get(f"/items/img/{first['id']}").json()
    assert item["id"] == first["id"] and item["metadata"]["path"] == first["metadata"]["path"]


def bomb_b64():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ("malformed JSON", dict(content=b"{oops", headers={"content-type": "application/json"}), 400, "malformed JSON"),
    ("not an object", dict(json=[1, 2]), 422, "must be a JSON object"),
    ("unknown index", dict(json={"index": "nope", "text": "x"}), 404, "unknown index 'nope'"),
    ("no index", dict(json={"text": "x"}), 422, "'index' must name"),
    ("k zero", dict(json={"index": "text", "text": "x", "k": 0}), 422, "'k' must be a positive integer, got 0"),
    ("k text", dict(json={"index": "text", "text": "x", "k": "3"}), 422, "got '3'"),
    ("k bool", dict(json={"index": "text", "text": "x", "k": True}), 422, "got True"),
    ("k absurd", dict(json={"index": "text", "text": "x", "k": 10 ** 9}), 422, "at most 1000"),
    ("text and image", dict(json={"index": "text", "text": "x", "image": "AAAA"}), 422, None),
    ("neither", dict(json={"index": "text"}), 422, "exactly one of 'text', 'image' and 'like'"),
    ("empty text", dict(json={"index": "text", "text": "  "}), 422, "non-empty string"),
    ("bad role", dict(json={"index": "text", "text": "x", "role": "admin"}), 422, "'role' must be"),
    ("unknown field", dict(json={"index": "text", "text": "x", "path": "/etc/passwd"}), 422, "unknown field(s) ['path']"),
    ("enhance not bool", dict(json={"index": "text", "text": "x", "enhance": "yes"}), 422, "'enhance' must be"),
    ("image not base64", dict(json={"index": "img", "image": "***"}), 422, "not valid base64"),
    ("image corrupt", dict(json={"index": "img", "image": base64.b64encode(b"not a png").decode()}), 422,
     "not a decodable image"),
    ("image bomb", dict(json={"index": "img", "image": None}), 422, "too many pixels"),
    ("wrong content type", dict(content=b"text=x", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
    ("oversized body", dict(content=b"x" * ((1 << 20) + 10), headers={"content-type": "application/json"}), 413,
     "request body over"),
    ("form without image", dict(data={"index": "img"}, files={"other": ("a.txt", b"x", "text/plain")}), 422,
     "needs an 'image' file"),
]


@pytest.mark.parametrize("name, kwargs, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_json_message(client, name, kwargs, status, message):
    if name == "image bomb":
        kwargs = dict(json={"index": "img", "image": bomb_b64()})
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]
    if message:
        assert message in body["error"], body


@pytest.mark.parametrize("url, status, message", [
    ("/items/text/nope", 404, "has no item 'nope'"), ("/items/nope/d0", 404, "unknown index"),
    ("/items/text/d0/thumbnail", 404, "is not an image"), ("/items/img/..%2F..%2Fetc%2Fpasswd/thumbnail", 404, "has no item"),
    ("/nothing", 404, "Not Found"),
])
def test_items_only_by_id(client, url, status, message):
    r = client.get(url)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_api_key(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    c = TestClient(create_app(served[1], api_key="s3cret"))
    assert c.get("/health").status_code == 200  # liveness stays open
    assert c.get("/info").status_code == 401 and "X-API-Key" in c.get("/info").json()["error"]
    assert c.get("/info", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_cors_is_off_unless_asked(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in TestClient(create_app(served[1])).get("/health", headers=origin).headers
    on = TestClient(create_app(served[1], cors_origins=["http://elsewhere.example"])).get("/health", headers=origin)
    assert on.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_a_model_that_did_not_build_the_index_is_refused(served):
    import lsb_mm
    from lsb_mm.errors import InputError
    from lsb_mm.serving.service import SearchService

    other = lsb_mm.create_model("open_clip:lsb-tiny-test", head="llr")
    with pytest.raises(InputError, match="was built from model"):
        SearchService(other, {"text": str(served[0] / "text.index")})
    assert json.dumps(served[1].info())  # info is plain JSON


@pytest.mark.slow
def test_cli_serve_answers_on_loopback(served):
    """``lsb-mm serve`` on a free loopback port answers /health, the page and /search, then is stopped."""
    import urllib.request

    from lsb_mm.serving.background import running_server

    w, _ = served
    with running_server(["--model", str(w / "m"), "--index", f"text={w / 'text.index'}"],
                        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}) as url:
        assert url.startswith("http://127.0.0.1:")
        assert b'id="search-form"' in urllib.request.urlopen(url + "/", timeout=30).read()
        req = urllib.request.Request(url + "/search", method="POST",
                                     data=json.dumps({"index": "text", "text": "rivers", "k": 2}).encode(),
                                     headers={"content-type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req, timeout=30).read())["hits"]) == 2


def test_page_is_self_contained(client):
    import re

    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for element in ('id="q"', 'id="file"', 'id="drop"', 'id="compare"', 'id="tokens"', 'role="alert"', "More like this"):
        assert element in page, element
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads nothing from elsewhere (offline)"
    assert ".innerHTML" not in page, "results are rendered as text, never as markup from the index"


def test_more_like_this_finds_the_item_first(client):
    img_id = client.post("/search", json={"index": "img", "text": "a picture", "k": 3}).json()["hits"][2]["id"]
    r = client.post("/search", json={"index": "img", "like": img_id, "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == img_id and r.json()["query"] == {"image": True}
    r = client.post("/search", json={"index": "text", "like": "d3", "k": 2})
    assert r.json()["hits"][0]["id"] == "d3" and r.json()["query"]["text"].startswith("document 3")
    for like, status, message in (("nope", 404, "has no item 'nope'"), (7, 422, "'like' must be an item id")):
        bad = client.post("/search", json={"index": "img", "like": like})
        assert bad.status_code == status and message in bad.json()["error"]
    both = client.post("/search", json={"index": "img", "like": img_id, "text": "x"})
    assert both.status_code == 422 and "exactly one of" in both.json()["error"]


def test_tokens_and_the_plain_embedding(client, served):
    r = client.post("/search", json={"index": "text", "text": "rivers and stones", "k": 5, "tokens": True}).json()
    assert r["enhance"] is True and r["tokens"] and all(isinstance(t["token"], str) and t["contribution"] >= 0 for t in r["tokens"])
    assert set(r["modulation"]) == {"max_over_min", "entropy"}
    plain = client.post("/search", json={"index": "text", "text": "rivers and stones", "k": 5, "enhance": False}).json()
    assert plain["enhance"] is False and "tokens" not in plain
    _, service = served
    q = service.model.encode_text(["rivers and stones"], enhance=False)
    ids = service.index("text").search(q, k=5)[1][0].tolist()
    assert [h["id"] for h in plain["hits"]] == ids  # enhance=false is the backbone embedding
    assert client.post("/search", json={"index": "text", "text": "x", "tokens": "yes"}).status_code == 422
    info = client.get("/info").json()
    assert info["indexes"]["text"]["modulation"]["max_over_min"] >= 1.0 and info["batching"]["on"] is True


def test_batching_groups_concurrent_queries_and_answers_each_right(served):
    import asyncio

    import numpy as np

    from lsb_mm.serving.batcher import Batcher

    _, service = served
    qs = [service.query("text", text=f"document {i % 5} about things", k=3) for i in range(12)]
    qs += [service.query("img", like=service.index("img").ids[i], k=2) for i in range(3)]
    qs += [service.query("text", text="rivers", k=4, enhance=False), service.query("text", text="rivers", k=4, tokens=True)]
    alone = [service.run([q])[0] for q in qs]
    batcher = Batcher(service.run, max_batch=64, max_wait=0.2)

    async def together():
        return await asyncio.gather(*(batcher.submit(q) for q in qs))

    try:
        grouped = asyncio.run(together())
    finally:
        batcher.close()
    assert batcher.stats["batches"] < len(qs) and batcher.stats["largest"] > 1
    for a, b in zip(alone, grouped):
        assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]
        np.testing.assert_allclose([h["score"] for h in a["hits"]], [h["score"] for h in b["hits"]], atol=1e-5)
        assert ("tokens" in a) == ("tokens" in b)
    assert max(r["seconds"]["batch"] for r in grouped) > 1


def test_a_query_that_fails_in_a_batch_fails_alone(served, monkeypatch):
    _, service = served
    real = service.model.encode_text

    def flaky(texts, **kw):
        if any("boom" in t for t in texts):
            raise RuntimeError("boom")
        return real(texts, **kw)

    monkeypatch.setattr(service.model, "encode_text", flaky)
    good, bad = service.query("text", text="rivers", k=2), service.query("text", text="boom", k=2)
    out = service.run([good, bad, good])
    assert len(out[0]["hits"]) == 2 and isinstance(out[1], RuntimeError) and out[2]["hits"] == out[0]["hits"]


def test_batching_off_answers_one_at_a_time(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    c = TestClient(create_app(served[1], batching=False))
    r = c.post("/search", json={"index": "text", "text": "rivers", "k": 2}).json()
    assert r["seconds"]["batch"] == 1 and c.get("/info").json()["batching"]["max_batch"] == 1


def test_a_chunked_body_over_the_limit_is_refused(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    c = TestClient(create_app(served[1], max_body=4096))

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        yield b'{"index": "text", "text": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over 4096 bytes" in r.json()["error"]
    small = c.post("/search", content=iter([b'{"index": "text", ', b'"text": "rivers", "k": 1}']),
                   headers={"content-type": "application/json"})
    assert small.status_code == 200 and len(small.json()["hits"]) == 1


def test_reload_swaps_a_rebuilt_folder_and_a_failed_one_keeps_the_old(served, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from lsb_mm.cli import main
    from lsb_mm.serving.app import create_app
    from lsb_mm.serving.service import SearchService

    w, service = served
    folder = tmp_path / "live.index"
    shutil.copytree(w / "text.index", folder)
    live = SearchService(service.model, {"live": str(folder)})
    c = TestClient(create_app(live), raise_server_exceptions=False)
    helpers.write_jsonl(tmp_path / "more.jsonl", [{"_id": f"n{i}", "text": f"note {i}"} for i in range(8)])
    assert main(["index", "--model", str(w / "m"), "--corpus", str(tmp_path / "more.jsonl"), "--output", str(folder),
                 "-q"]) == 0
    assert c.get("/info").json()["indexes"]["live"]["count"] == 5  # still the old one until reloaded
    r = c.post("/admin/reload", json={"index": "live"})
    assert r.status_code == 200 and r.json()["reloaded"][0]["count"] == 8 and r.json()["reloaded"][0]["previous_count"] == 5
    assert c.post("/search", json={"index": "live", "text": "note 3", "k": 1}).json()["hits"][0]["id"].startswith("n")
    (folder / "index.faiss").write_bytes(b"garbage")  # a broken folder: the reload fails and says why
    r = c.post("/admin/reload", json={"index": "live"})
    assert r.status_code == 409 and "still serving" in r.json()["error"] and "index.faiss" in r.json()["error"]
    assert len(c.post("/search", json={"index": "live", "text": "note", "k": 20}).json()["hits"]) == 8
    for body, status, message in (({"index": "nope"}, 404, "unknown index"), ({"folder": "/etc"}, 422, "must be"),
                                  (None, 409, "still serving")):
        r = c.post("/admin/reload", json=body) if body is not None else c.post("/admin/reload")
        assert r.status_code == status and message in r.json()["error"], r.text
    assert c.post("/admin/reload", content=b"{bad", headers={"content-type": "application/json"}).status_code == 400


def test_api_key_guards_data_and_admin_but_not_the_page(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serving.app import create_app

    c = TestClient(create_app(served[1], api_key="k"))
    assert c.get("/").status_code == 200 and c.get("/openapi.json").status_code == 200
    assert c.post("/admin/reload").status_code == 401 and c.get("/items/text/d0").status_code == 401
    assert c.post("/search", json={"index": "text", "text": "x"}, headers={"X-API-Key": "k"}).status_code == 200


@pytest.mark.parametrize("extra, message", [
    (["--index", "noequals"], "expected NAME=FOLDER"), (["--index", "a=x", "--index", "a=y"], "given twice"),
    (["--index", "a=x", "--port", "0"], "--port must be in 1..65535"),
    (["--index", "a=/nope"], "index folder /nope does not exist"),
    (["--index", "a=x", "--max-batch", "0"], "--max-batch must be >= 1"),
    (["--index", "a=x", "--batch-wait-ms", "-1"], "--batch-wait-ms in 0..1000"),
])
def test_cli_serve_refuses_bad_settings(served, extra, message, capsys):
    from lsb_mm.cli import main

    assert main(["serve", "--model", str(served[0] / "m"), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serve_says_when_the_port_is_taken(served):
    import socket
    import subprocess
    import sys

    w, _ = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "lsb_mm", "serve", "--model", str(w / "m"), "--index",
                            f"text={w / 'text.index'}", "--port", str(port)], capture_output=True, text=True, timeout=180,
                           env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert r.returncode == 2 and f"could not listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
