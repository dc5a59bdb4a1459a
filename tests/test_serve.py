"""The search service (lsb_mm.serve) through FastAPI's TestClient: every endpoint, and every class
of bad request answered with a 4xx JSON message (never a 500)."""
import base64
import io
import json
import os

import pytest

import synthetic
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
    from lsb_mm.serve import SearchService

    w = tmp_path_factory.mktemp("serve")
    model = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    model.save_pretrained(str(w / "m"))
    synthetic.write_jsonl(w / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i} about {t}"}
                                               for i, t in enumerate(["cats", "dogs", "rivers", "stones", "clouds"])])
    synthetic.labelled_folder(str(w / "imgs"), per_class=2)
    for argv in (["index", "--model", str(w / "m"), "--corpus", str(w / "corpus.jsonl"), "--output", str(w / "text.index"), "-q"],
                 ["index", "--model", str(w / "m"), "--images", str(w / "imgs"), "--output", str(w / "img.index"), "-q"]):
        assert main(argv) == 0
    model = lsb_mm.load_model(str(w / "m"))
    return w, SearchService(model, {"text": str(w / "text.index"), "img": str(w / "img.index")})


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serve import create_app

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

    from lsb_mm.images import list_image_files

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
    ("neither", dict(json={"index": "text"}), 422, "exactly one of 'text' and 'image'"),
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

    from lsb_mm.serve import create_app

    c = TestClient(create_app(served[1], api_key="s3cret"))
    assert c.get("/health").status_code == 200  # liveness stays open
    assert c.get("/info").status_code == 401 and "X-API-Key" in c.get("/info").json()["error"]
    assert c.get("/info", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_cors_is_off_unless_asked(served):
    from fastapi.testclient import TestClient

    from lsb_mm.serve import create_app

    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in TestClient(create_app(served[1])).get("/health", headers=origin).headers
    on = TestClient(create_app(served[1], cors_origins=["http://elsewhere.example"])).get("/health", headers=origin)
    assert on.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_a_model_that_did_not_build_the_index_is_refused(served):
    import lsb_mm
    from lsb_mm.errors import InputError
    from lsb_mm.serve import SearchService

    other = lsb_mm.create_model("open_clip:lsb-tiny-test", head="llr")
    with pytest.raises(InputError, match="was built from model"):
        SearchService(other, {"text": str(served[0] / "text.index")})
    assert json.dumps(served[1].info())  # info is plain JSON


def test_cli_serve_answers_on_loopback(served, tmp_path):
    """``lsb-mm serve`` on a free loopback port answers /health and /search, then is stopped."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    w, _ = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lsb_mm", "serve", "--model", str(w / "m"), "--index",
                             f"text={w / 'text.index'}", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, up = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None and not up:
            try:
                up = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
            except OSError:
                time.sleep(0.3)
        assert up, proc.stderr.read() if proc.poll() is not None else "no answer in 120 s"
        req = urllib.request.Request(f"http://127.0.0.1:{port}/search", method="POST",
                                     data=json.dumps({"index": "text", "text": "rivers", "k": 2}).encode(),
                                     headers={"content-type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req, timeout=30).read())["hits"]) == 2
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("extra, message", [
    (["--index", "noequals"], "expected NAME=FOLDER"), (["--index", "a=x", "--index", "a=y"], "given twice"),
    (["--index", "a=x", "--port", "0"], "--port must be in 1..65535"),
    (["--index", "a=/nope"], "index folder /nope does not exist"),
])
def test_cli_serve_refuses_bad_settings(served, extra, message, capsys):
    from lsb_mm.cli import main

    assert main(["serve", "--model", str(served[0] / "m"), *extra]) == 2
    assert message in capsys.readouterr().err
