"""Bad input gets a clear error naming the item; nothing silently becomes a zero vector."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lsb_mm
from lsb_mm.errors import ImageLoadError, InputError


@pytest.fixture(scope="module")
def model():
    return lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")


def test_text_inputs(model):
    with pytest.raises(InputError, match="empty list"):
        model.encode_text([])
    with pytest.raises(InputError, match=r"texts\[1\] is a int"):
        model.encode_text(["ok", 3])
    with pytest.raises(InputError, match="role must be one of"):
        model.encode_text(["ok"], role="passage")
    with pytest.raises(InputError, match="batch_size"):
        model.encode_text(["ok"], batch_size=0)
    with pytest.raises(InputError, match="convert_to"):
        model.encode_text(["ok"], convert_to="list")
    e = model.encode_text(["", "text"])  # an empty string is a valid (if poor) query, not an error
    assert np.isfinite(e).all() and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


def test_image_files_missing_or_unreadable_are_named(model, tmp_path, image_files):
    with pytest.raises(InputError, match="empty list"):
        model.encode_image([])
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="nope.png: no such file"):
        model.encode_image(image_files + [missing])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg: not a decodable image"):
        model.encode_image([image_files[0], str(bad)])
    with pytest.raises(ImageLoadError, match="is a directory"):
        model.encode_image([str(tmp_path)])
    with pytest.raises(InputError, match="got int"):
        model.encode_image([image_files[0], 7])
    # with worker processes the same error still names the file
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        model.encode_image([image_files[0], str(bad)], num_workers=1)


def test_image_modes_are_converted(model, rgb_images):
    rgb = rgb_images[0]
    rgba = rgb.convert("RGBA")
    grey = rgb.convert("L")
    pal = rgb.convert("P")
    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    e = model.encode_image([rgb, rgba, grey, pal, transparent])
    assert np.isfinite(e).all() and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(e[0], e[1], atol=1e-6)  # opaque RGBA == RGB
    # a fully transparent image is composited on white, not on black
    white = model.encode_image(Image.new("RGB", (32, 32), (255, 255, 255)))
    np.testing.assert_allclose(e[4], white, atol=1e-6)


@pytest.mark.slow
def test_model_names_are_checked():
    with pytest.raises(lsb_mm.ModelLoadError, match="must start with one of"):
        lsb_mm.create_model("clip-vit-base")
    with pytest.raises(lsb_mm.ModelLoadError, match="unknown open_clip model"):
        lsb_mm.create_model("open_clip:clip-vit")
    with pytest.raises(lsb_mm.ModelLoadError, match="unknown timm model"):
        lsb_mm.create_model("timm:not-a-net")
    with pytest.raises(lsb_mm.ModelLoadError, match="neither a folder nor a Hugging Face model id"):
        lsb_mm.create_model("hf:/no/such/folder")
    with pytest.raises(ValueError, match="unknown head"):
        lsb_mm.create_model("open_clip:lsb-tiny-test", head="bm25")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lsb_mm", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_encode_texts_and_images(tmp_path, image_files):
    texts = tmp_path / "q.txt"
    texts.write_text("a red car\nthe cat sat\n")
    out = tmp_path / "out" / "q.npy"
    r = run_cli("encode", "--model", "open_clip:lsb-tiny-test", "--head", "slr", "--texts", str(texts), "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    emb = np.load(out)
    assert emb.shape == (2, 32) and summary["count"] == 2 and summary["dim"] == 32
    ref = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr").encode_text(["a red car", "the cat sat"])
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "out" / "q.rows.jsonl").read_text().splitlines()]
    assert rows[1] == {"row": 1, "text": "the cat sat"}

    img_dir = image_files[0].rsplit("/", 1)[0]
    out = tmp_path / "i.npy"
    r = run_cli("encode", "--model", "open_clip:lsb-tiny-test", "--images", img_dir, "--output", str(out),
                "--role", "document", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (5, 32)


@pytest.mark.slow
def test_cli_errors_exit_2_without_traceback(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    cases = [
        (["--model", "open_clip:nope", "--texts", __file__], "unknown open_clip model"),
        (["--model", "open_clip:lsb-tiny-test", "--texts", str(tmp_path / "missing.txt")], "no such file"),
        (["--model", "open_clip:lsb-tiny-test", "--images", str(tmp_path / "imgs")], "bad.png"),
        (["--model", str(tmp_path), "--texts", __file__], "must start with one of"),
    ]
    for args, msg in cases:
        r = run_cli("encode", *args, "--output", str(tmp_path / "o.npy"), "-q")
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("--help")
    assert r.returncode == 0 and "encode" in r.stdout
    r = run_cli("encode", "--help")
    assert r.returncode == 0 and "--role" in r.stdout and "examples" in r.stdout


def test_image_preprocessing_runs_on_one_thread_and_the_count_is_restored(model, rgb_images):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen, transform = [], model.image_transform

    def recording(img):
        seen.append(torch.get_num_threads())
        return transform(img)

    model._image_transform = recording
    try:
        model.encode_image(rgb_images, batch_size=2)
        assert seen == [1] * len(rgb_images) and torch.get_num_threads() == 2
    finally:
        model._image_transform = None
        torch.set_num_threads(before)


def test_list_models_by_family():
    packaged = ["minilm", "effnet-lite0", "minilm+effnet-lite0"]
    assert lsb_mm.list_models("packaged") == packaged and "open_clip:lsb-tiny-test" in lsb_mm.list_models("open_clip")
    assert lsb_mm.list_models() == packaged + lsb_mm.list_models("open_clip")
    assert "timm:resnet18" in lsb_mm.list_models("timm")
    with pytest.raises(lsb_mm.ModelLoadError, match="hf: models are Hugging Face hub ids or local folders"):
        lsb_mm.list_models("hf")
    with pytest.raises(lsb_mm.ModelLoadError, match=r"dual:<text name>\|<image name>"):
        lsb_mm.list_models("dual")
    with pytest.raises(lsb_mm.ModelLoadError, match="unknown family 'keras'"):
        lsb_mm.list_models("keras")


def test_cli_choices_come_from_the_registries(monkeypatch):
    """A head registered with lsb_mm.models.heads.register_head is a choice of every command that takes --head."""
    from lsb_mm.models import heads
    from lsb_mm.cli import build_parser
    from lsb_mm.models.encoders.hf_backbone import POOLINGS

    monkeypatch.setitem(heads.HEADS, "xyz", heads.HEADS["slr"])
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("encode", "train", "index", "search", "eval", "demo"):
        head = next(a for a in sub[command]._actions if a.dest == "head")
        assert "xyz" in head.choices and ("none" in head.choices) == (command != "demo"), command
    pooling = next(a for a in sub["train"]._actions if a.dest == "pooling")
    assert pooling.choices == ["auto", *POOLINGS]
