"""save_pretrained -> load_model is bit-exact; broken folders fail with a clear message."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import lsb_mm
from lsb_mm.errors import ModelLoadError

TEXTS = ["a cat on a mat", "dogs", "a long sentence about retrieval of fine grained things"]


def _trained_looking(model):
    """Random values in every head parameter and a fitted-looking codebook, so nothing is at init."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
        if model.visual_words is not None:
            model.visual_words.centroids.copy_(torch.nn.functional.normalize(
                torch.randn(model.visual_words.centroids.shape, generator=g), dim=-1))
    return model


def _assert_bit_exact(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.config() == b.config()
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("head", ["none", "slr", "llr", "clr"])
def test_round_trip_open_clip_text_and_image(tmp_path, head, rgb_images):
    m = _trained_looking(lsb_mm.create_model("open_clip:lsb-tiny-test", head=head, vocab_size=32, fusion_p=True))
    m.save_pretrained(tmp_path / "m")
    m2 = lsb_mm.load_model(tmp_path / "m")
    _assert_bit_exact(m, m2)
    for role in ("query", "document"):
        np.testing.assert_array_equal(m.encode_text(TEXTS, role=role), m2.encode_text(TEXTS, role=role))
        np.testing.assert_array_equal(m.encode_image(rgb_images, role=role), m2.encode_image(rgb_images, role=role))
    assert m2.fusion == {"query": True, "document": True}


@pytest.mark.parametrize("head", ["slr", "llr", "clr"])
def test_round_trip_hf_text(tmp_path, head, tiny_hf_dir, tiny_hf_mlm_dir):
    for src in (tiny_hf_dir, tiny_hf_mlm_dir):
        m = _trained_looking(lsb_mm.create_model(f"hf:{src}", head=head, pooling="mean"))
        m.save_pretrained(tmp_path / "m")
        m2 = lsb_mm.load_model(tmp_path / "m")
        _assert_bit_exact(m, m2)
        np.testing.assert_array_equal(m.encode_text(TEXTS), m2.encode_text(TEXTS))
        assert m2.backbone.pooling == "mean" and (m2.backbone.mlm_head is not None) == (src == tiny_hf_mlm_dir)


@pytest.mark.parametrize("head", ["slr", "llr", "clr"])
def test_round_trip_timm_image(tmp_path, head, rgb_images):
    m = _trained_looking(lsb_mm.create_model("timm:resnet18", head=head, vocab_size=16))
    m.save_pretrained(tmp_path / "m")
    m2 = lsb_mm.load_model(tmp_path / "m")
    _assert_bit_exact(m, m2)
    np.testing.assert_array_equal(m.encode_image(rgb_images), m2.encode_image(rgb_images))


def test_saved_folder_is_self_describing(tmp_path):
    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    m.save_pretrained(tmp_path / "m")
    files = set(os.listdir(tmp_path / "m"))
    assert {"lsb_config.json", "model.safetensors", "README.md", "backbone"} <= files
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f or ".old-" in f]
    cfg = json.loads((tmp_path / "m" / "lsb_config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["text_head"]["kind"] == "slr" and cfg["visual_words"]["vocab_size"] == 1024
    assert cfg["files"] and all(k.startswith("backbone/") for k in cfg["files"])  # every backbone file checksummed
    # create_model accepts a saved folder too
    assert lsb_mm.create_model(str(tmp_path / "m")).fingerprint() == m.fingerprint()
    # overwriting an existing folder works and leaves no temporary folders
    m.save_pretrained(tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.fixture
def saved(tmp_path):
    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="llr", vocab_size=16)
    src = tmp_path / "good"
    m.save_pretrained(src)

    def copy():
        dst = tmp_path / f"bad{len(os.listdir(tmp_path))}"
        shutil.copytree(src, dst)
        return dst

    return copy


def _edit_config(folder, fn):
    p = folder / "lsb_config.json"
    cfg = json.loads(p.read_text())
    fn(cfg)
    p.write_text(json.dumps(cfg))


def test_broken_folders_fail_clearly(saved, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        lsb_mm.load_model(tmp_path / "nowhere")
    d = saved(); os.remove(d / "lsb_config.json")
    with pytest.raises(ModelLoadError, match="lsb_config.json is missing"):
        lsb_mm.load_model(d)
    d = saved(); os.remove(d / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors is missing"):
        lsb_mm.load_model(d)
    d = saved(); (d / "lsb_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        lsb_mm.load_model(d)
    d = saved(); _edit_config(d, lambda c: c.update(format_version=99))
    with pytest.raises(ModelLoadError, match="format_version 99 is not supported"):
        lsb_mm.load_model(d)
    d = saved(); _edit_config(d, lambda c: c.update(format="something-else"))
    with pytest.raises(ModelLoadError, match="field 'format'"):
        lsb_mm.load_model(d)
    d = saved(); _edit_config(d, lambda c: c["backbone"].update(family="keras"))
    with pytest.raises(ModelLoadError, match="backbone family 'keras' unknown"):
        lsb_mm.load_model(d)
    d = saved(); _edit_config(d, lambda c: c["visual_words"].update(vocab_size=32))
    with pytest.raises(ModelLoadError, match=r"has shape \(16, .*implies \(32"):
        lsb_mm.load_model(d)
    d = saved(); _edit_config(d, lambda c: c["text_head"].update(kind="slr"))
    with pytest.raises(ModelLoadError, match="does not match the architecture"):
        lsb_mm.load_model(d)
    d = saved()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt"):
        lsb_mm.load_model(d)
    d = saved()
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # flip bits inside a tensor: shapes still fit, values do not
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="checksum"):
        lsb_mm.load_model(d)
    d = saved(); os.remove(d / "backbone" / "open_clip_config.json")
    with pytest.raises(ModelLoadError, match=r"missing \['backbone/open_clip_config.json'\]"):
        lsb_mm.load_model(d)
    d = saved(); os.remove(d / "backbone" / "open_clip_config.json")  # a format-1 folder: the loader's own check
    _edit_config(d, lambda c: (c.update(format_version=1), c.pop("files")))
    with pytest.raises(ModelLoadError, match="open_clip_config.json is missing"):
        lsb_mm.load_model(d)
    other = saved()
    for target in (f"../{other.name}/model.safetensors", str(other / "model.safetensors"), "", None, ".."):
        d = saved(); _edit_config(d, lambda c: c["weights"].update(file=target))
        with pytest.raises(ModelLoadError, match="weights.file must be a file name inside the folder"):
            lsb_mm.load_model(d)


def test_load_model_leaves_the_global_random_state_alone(tmp_path):
    """Like create_model: building the architecture draws random numbers, on a forked generator."""
    for name, head in (("open_clip:lsb-tiny-test", "llr"), ("timm:resnet18", "clr")):
        folder = tmp_path / name.replace(":", "_")
        lsb_mm.create_model(name, head=head, vocab_size=8, **({"img_size": 32} if name.startswith("timm") else {})
                            ).save_pretrained(folder)
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        lsb_mm.load_model(folder)
        assert torch.equal(torch.rand(3), expected), name


def test_crash_during_save_keeps_the_old_folder(tmp_path, monkeypatch):
    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    m.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _trained_looking(m).save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m"]
    lsb_mm.load_model(tmp_path / "m")


@pytest.mark.parametrize("head", ["slr", "clr"])
def test_round_trip_hf_clip_and_vit(tmp_path, head, tiny_hf_clip_dir, tiny_hf_vit_dir, rgb_images):
    for src in (tiny_hf_clip_dir, tiny_hf_vit_dir):
        m = _trained_looking(lsb_mm.create_model(f"hf:{src}", head=head, vocab_size=16))
        m.save_pretrained(tmp_path / "m")
        m2 = lsb_mm.load_model(tmp_path / "m")
        _assert_bit_exact(m, m2)
        np.testing.assert_array_equal(m.encode_image(rgb_images), m2.encode_image(rgb_images))
        if m.has_text:
            np.testing.assert_array_equal(m.encode_text(TEXTS), m2.encode_text(TEXTS))


def test_backbone_files_are_verified(tmp_path, tiny_hf_dir):
    """A removed, edited or added file under backbone/ (a tokenizer, a config) is refused on load,
    naming it; it would otherwise load quietly as a different model."""
    import shutil

    lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="slr").save_pretrained(tmp_path / "m")
    names = json.loads((tmp_path / "m" / "lsb_config.json").read_text())["files"]
    assert "backbone/tokenizer.json" in names

    def damaged(name):
        shutil.copytree(tmp_path / "m", tmp_path / name)
        return tmp_path / name

    (damaged("gone") / "backbone" / "tokenizer.json").unlink()
    with pytest.raises(lsb_mm.ModelLoadError, match=r"missing \['backbone/tokenizer.json'\]"):
        lsb_mm.load_model(tmp_path / "gone")
    cfg = damaged("edited") / "backbone" / "config.json"
    cfg.write_text(cfg.read_text().replace('"gelu"', '"relu"'))
    with pytest.raises(lsb_mm.ModelLoadError, match=r"backbone/config.json: checksum does not match"):
        lsb_mm.load_model(tmp_path / "edited")
    (damaged("added") / "backbone" / "added_tokens.json").write_text("{}")
    with pytest.raises(lsb_mm.ModelLoadError, match=r"not recorded \['backbone/added_tokens.json'\]"):
        lsb_mm.load_model(tmp_path / "added")
    lsb_mm.load_model(tmp_path / "m")  # the untouched folder still loads
