"""Backbones through lsb-mm equal their own libraries; visual words depend on content."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lsb_mm
from conftest import need

TEXTS = ["a photo of a cat", "a red bicycle leaning on a wall", "x", "the quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def tiny():
    return lsb_mm.create_model("open_clip:lsb-tiny-test", head="llr", head_init="random")


def test_tiny_open_clip_plain_equals_open_clip(tiny, rgb_images):
    import open_clip

    tok = open_clip.get_tokenizer("lsb-tiny-test")
    with torch.no_grad():
        ref_t = tiny.backbone.model.encode_text(tok(TEXTS), normalize=True).numpy()
        pix = torch.stack([tiny.image_transform(im) for im in rgb_images])
        ref_i = tiny.backbone.model.encode_image(pix, normalize=True).numpy()
    for kw in ({"enhance": False}, {"role": "document"}):
        np.testing.assert_allclose(tiny.encode_text(TEXTS, **kw), ref_t, atol=1e-6)
        np.testing.assert_allclose(tiny.encode_image(rgb_images, **kw), ref_i, atol=1e-6)
    none = lsb_mm.create_model("open_clip:lsb-tiny-test", head="none")
    np.testing.assert_allclose(none.encode_text(TEXTS), ref_t, atol=1e-6)
    np.testing.assert_allclose(none.encode_image(rgb_images), ref_i, atol=1e-6)
    # the trained-looking (random) head does change query embeddings
    assert np.abs(tiny.encode_query(TEXTS) - ref_t).max() > 1e-4


def test_encode_output_contract(tiny, rgb_images):
    e = tiny.encode_text(TEXTS, batch_size=3)
    assert e.dtype == np.float32 and e.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # batching and length-sorting do not change results or order
    np.testing.assert_allclose(e, np.stack([tiny.encode_text(t) for t in TEXTS]), atol=1e-5)
    t = tiny.encode_image(rgb_images, convert_to="torch", batch_size=2)
    assert isinstance(t, torch.Tensor) and t.shape == (5, 32)
    assert tiny.encode_text("one").shape == (32,)


def test_open_clip_tiny_builds_fast_and_deterministic():
    import time

    t0 = time.perf_counter()
    a = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    assert time.perf_counter() - t0 < 5.0  # generous: CI machines are slow; typically ~0.2 s
    b = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr")
    np.testing.assert_array_equal(a.encode_text(TEXTS), b.encode_text(TEXTS))
    assert "open_clip:lsb-tiny-test" in lsb_mm.list_models()


def test_open_clip_local_dir_and_pretrained_file(tmp_path, tiny):
    """open_clip's own `local-dir:` scheme and a `pretrained=` weights file both load offline."""
    import json

    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny.backbone.model.state_dict().items()}
    d = tmp_path / "oc"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.backbone.model_cfg,
                                                         "preprocess_cfg": {"size": 32}}))
    save_file(sd, d / "open_clip_model.safetensors")
    ref = tiny.encode_text(TEXTS, enhance=False)
    m1 = lsb_mm.create_model(f"open_clip:local-dir:{d}", head="none")
    np.testing.assert_allclose(m1.encode_text(TEXTS), ref, atol=1e-6)
    m2 = lsb_mm.create_model("open_clip:lsb-tiny-test", head="none", pretrained=str(d / "open_clip_model.safetensors"), seed=5)
    np.testing.assert_allclose(m2.encode_text(TEXTS), ref, atol=1e-6)
    with pytest.raises(lsb_mm.ModelLoadError, match="neither a file nor a known tag"):
        lsb_mm.create_model("open_clip:lsb-tiny-test", pretrained="no-such-tag")


def test_hf_mean_pooling_equals_transformers(tiny_hf_dir):
    from transformers import AutoModel, AutoTokenizer

    m = lsb_mm.create_model(f"hf:{tiny_hf_dir}", head="slr", pooling="mean", head_init="random")
    tok, ref_model = AutoTokenizer.from_pretrained(tiny_hf_dir), AutoModel.from_pretrained(tiny_hf_dir).eval()
    enc = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = ref_model(**enc).last_hidden_state
    msk = enc["attention_mask"].unsqueeze(-1).float()
    ref = F.normalize((h * msk).sum(1) / msk.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(m.encode_text(TEXTS, enhance=False), ref, atol=1e-5)
    np.testing.assert_allclose(m.encode_text(TEXTS, role="document"), ref, atol=1e-5)
    assert not m.has_image
    with pytest.raises(lsb_mm.InputError, match="no image tower"):
        m.encode_image(["x.png"])


def test_hf_mlm_head_feeds_clr(tiny_hf_mlm_dir):
    m = lsb_mm.create_model(f"hf:{tiny_hf_mlm_dir}", head="clr")
    s = m.text_stream(TEXTS)
    assert s.vocab_logits is not None
    z = s.vocab_logits(s.summary)
    assert z.shape == (len(TEXTS), 30522)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    full = AutoModelForMaskedLM.from_pretrained(tiny_hf_mlm_dir).eval()
    enc = AutoTokenizer.from_pretrained(tiny_hf_mlm_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = full(**enc).logits[:, 0]
    assert torch.allclose(z, ref, atol=1e-4)


def test_timm_cnn_and_vit_plain_equal_timm(rgb_images):
    for name, kw in (("resnet18", {}), ("vit_tiny_patch16_224", {"img_size": 32})):
        m = lsb_mm.create_model(f"timm:{name}", head="clr", vocab_size=64, **kw)
        pix = torch.stack([m.image_transform(im) for im in rgb_images])
        with torch.no_grad():
            ref = F.normalize(m.backbone.model(pix), dim=-1).numpy()
        np.testing.assert_allclose(m.encode_image(rgb_images, enhance=False), ref, atol=1e-5)
        assert not m.has_text


def test_real_minilm_matches_sentence_transformers(minilm_path):
    from lsb_mm_experiments.datasets import load_manpages

    try:
        pages = load_manpages(limit=150)
    except lsb_mm.InputError as exc:
        need(False, str(exc))
    need(len(pages) >= 100, "Debian manpages / manpages-dev not installed")
    sentences = [p.name_line for p in pages]
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu")
    ref = st.encode(sentences, normalize_embeddings=True, batch_size=32)
    m = lsb_mm.create_model(f"hf:{minilm_path}", head="none", pooling="mean")
    ours = m.encode_text(sentences, batch_size=32)
    cos = (ours * ref).sum(1)
    assert len(sentences) >= 100 and cos.min() >= 0.9999, cos.min()
    # also through a head with enhance=False, and with pooling read from the ST folder
    m2 = lsb_mm.create_model(f"hf:{minilm_path}", head="llr")
    assert m2.backbone.pooling == "mean" and m2.backbone.max_length == 256
    assert ((m2.encode_text(sentences[:20], enhance=False) * ref[:20]).sum(1)).min() >= 0.9999


def _st_folder(path, tiny_hf_dir, *extra):
    """A sentence-transformers folder saved by sentence-transformers itself: tiny BERT, mean pooling, ``extra`` modules."""
    import warnings

    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import models as M
    torch.manual_seed(0)
    st = SentenceTransformer(modules=[M.Transformer(tiny_hf_dir), M.Pooling(32, "mean"), *extra], device="cpu")
    st.save(str(path))
    return st


def test_sentence_transformers_dense_and_normalize_are_read_from_modules_json(tmp_path, tiny_hf_dir):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import models as M
    st = _st_folder(tmp_path / "st", tiny_hf_dir, M.Dense(32, 12, activation_function=torch.nn.Tanh()),
                    M.Dense(12, 8, bias=False, activation_function=torch.nn.Identity()), M.Normalize())
    texts = ["a man page about sockets", "ls lists directory contents", "x"]
    m = lsb_mm.create_model(f"hf:{tmp_path / 'st'}", head="slr")
    assert m.embed_dim == 8 and m.backbone.normalize and [d["activation"] for d in m.backbone.dense_specs] == ["Tanh", "Identity"]
    ref = st.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(m.encode_text(texts, enhance=False), ref, atol=1e-5)
    m.save_pretrained(tmp_path / "saved")
    again = lsb_mm.load_model(tmp_path / "saved")
    assert again.fingerprint() == m.fingerprint() and again.embed_dim == 8
    np.testing.assert_allclose(again.encode_text(texts, enhance=False), ref, atol=1e-5)
    # an old-style folder (pytorch_model.bin Dense weights, boolean pooling flags) reads the same
    old = tmp_path / "old"
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(tmp_path / "st", old)
    for dense in sorted(p for p in os.listdir(old) if p.endswith("_Dense")):
        torch.save(load_file(str(old / dense / "model.safetensors")), str(old / dense / "pytorch_model.bin"))
        os.remove(old / dense / "model.safetensors")
    (old / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    np.testing.assert_allclose(lsb_mm.create_model(f"hf:{old}", head="none").encode_text(texts), ref, atol=1e-5)


def test_sentence_transformers_modules_lsb_mm_cannot_run_are_refused_by_name(tmp_path, tiny_hf_dir):
    _st_folder(tmp_path / "st", tiny_hf_dir)

    def variant(name, modules=None, pooling=None):
        folder = tmp_path / name
        import shutil

        shutil.copytree(tmp_path / "st", folder)
        mods = json.loads((folder / "modules.json").read_text())
        if modules:
            mods = modules(mods)
        (folder / "modules.json").write_text(json.dumps(mods))
        if pooling:
            (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        return f"hf:{folder}"

    layer_norm = variant("ln", lambda m: m + [{"idx": 2, "name": "2", "path": "2_LayerNorm",
                                               "type": "sentence_transformers.models.LayerNorm"}])
    with pytest.raises(lsb_mm.ModelLoadError, match="'sentence_transformers.models.LayerNorm'"):
        lsb_mm.create_model(layer_norm, head="none")
    custom = variant("custom", lambda m: m + [{"idx": 2, "name": "2", "path": "2_X", "type": "my_package.Dense"}])
    with pytest.raises(lsb_mm.ModelLoadError, match="'my_package.Dense'"):
        lsb_mm.create_model(custom, head="none")
    outside = variant("outside", lambda m: [m[0], {**m[1], "path": "../elsewhere"}])
    with pytest.raises(lsb_mm.ModelLoadError, match="'../elsewhere' leaves the folder"):
        lsb_mm.create_model(outside, head="none")
    reordered = variant("order", lambda m: m[::-1])
    with pytest.raises(lsb_mm.ModelLoadError, match="are not Transformer, Pooling"):
        lsb_mm.create_model(reordered, head="none")
    for mode in ({"pooling_mode": "weightedmean"}, {"pooling_mode_lasttoken": True},
                 {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}):
        with pytest.raises(lsb_mm.ModelLoadError, match="pooling .* is not supported"):
            lsb_mm.create_model(variant(f"pool{len(str(mode))}{sorted(mode)[0]}", pooling=mode), head="none")
    assert lsb_mm.create_model(variant("cls", pooling={"pooling_mode": "cls"}), head="none").backbone.pooling == "cls"
    # the user's own pooling choice wins over the folder's, also over one lsb-mm does not have
    weighted = variant("weighted", pooling={"pooling_mode": "weightedmean"})
    assert lsb_mm.create_model(weighted, head="none", pooling="max").backbone.pooling == "max"


def test_visual_words_depend_on_content(rgb_images):
    from PIL import Image

    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr", vocab_size=64)
    pix = torch.stack([m.image_transform(im) for im in rgb_images[:2]])
    s = m.image_stream(pix)
    assert s.ids.shape == (2, 16) and s.modality == "image"
    a, b = sorted(s.ids[0].tolist()), sorted(s.ids[1].tolist())
    assert a != b
    # a flat image has (nearly) one visual word everywhere, a noisy one many
    flat = m.image_transform(Image.new("RGB", (32, 32), (120, 30, 200))).unsqueeze(0)
    assert len(set(m.image_stream(flat).ids[0].tolist())) < len(set(a))


def test_fit_codebook_changes_and_persists(tmp_path, image_files):
    m = lsb_mm.create_model("open_clip:lsb-tiny-test", head="clr", vocab_size=8)
    before = m.visual_words.centroids.clone()
    m.fit_codebook(image_files * 2, niter=5)
    after = m.visual_words.centroids
    assert after.shape == before.shape and not torch.allclose(before, after)
    m.fit_codebook(image_files, vocab_size=16, niter=5)
    assert m.visual_words.vocab_size == 16 and m.image_head.vocab_size == 16
    m.save_pretrained(tmp_path / "m")
    m2 = lsb_mm.load_model(tmp_path / "m")
    assert torch.equal(m2.visual_words.centroids, m.visual_words.centroids)
    np.testing.assert_array_equal(m2.encode_image(image_files), m.encode_image(image_files))
    with pytest.raises(ValueError, match="at least 1000 patch features"):
        m.fit_codebook(image_files[:1], vocab_size=1000)


def test_hf_clip_plain_equals_transformers(tiny_hf_clip_dir, rgb_images):
    from transformers import CLIPModel, CLIPProcessor

    m = lsb_mm.create_model(f"hf:{tiny_hf_clip_dir}", head="llr", vocab_size=32, head_init="random")
    assert m.has_text and m.has_image and m.embed_dim == 16
    ref_model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_hf_clip_dir)
    with torch.no_grad():
        t = ref_model.get_text_features(**proc(text=TEXTS, padding=True, return_tensors="pt"))
        i = ref_model.get_image_features(**proc(images=rgb_images, return_tensors="pt"))
    t = getattr(t, "pooler_output", t)  # transformers 5 returns an output object
    i = getattr(i, "pooler_output", i)
    np.testing.assert_allclose(m.encode_text(TEXTS, enhance=False), F.normalize(t, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(m.encode_image(rgb_images, enhance=False), F.normalize(i, dim=-1).numpy(), atol=1e-5)
    s = m.text_stream(TEXTS)
    assert s.vocab_size == 49408 and s.content_mask.sum() < s.mask.sum()  # BOS/EOS are special
    assert np.abs(m.encode_query(TEXTS) - m.encode_text(TEXTS, enhance=False)).max() > 1e-4


def test_hf_vit_patch_tokens(tiny_hf_vit_dir, rgb_images):
    from transformers import ViTImageProcessor, ViTModel

    m = lsb_mm.create_model(f"hf:{tiny_hf_vit_dir}", head="slr", vocab_size=32)
    ref = ViTModel.from_pretrained(tiny_hf_vit_dir).eval()
    pix = ViTImageProcessor.from_pretrained(tiny_hf_vit_dir)(images=rgb_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = ref(pixel_values=pix).last_hidden_state[:, 0]
    np.testing.assert_allclose(m.encode_image(rgb_images), F.normalize(cls, dim=-1).numpy(), atol=1e-5)
    s = m.image_stream(pix)
    assert s.ids.shape == (len(rgb_images), 16) and s.hidden.shape[1] == 16
    with pytest.raises(lsb_mm.ModelLoadError, match="pooling"):
        lsb_mm.create_model(f"hf:{tiny_hf_vit_dir}", pooling="max")


def test_timm_cnn_img_size_changes_only_the_preprocessing(rgb_images, tmp_path):
    m = lsb_mm.create_model("timm:resnet18", head="slr", vocab_size=16, img_size=64)
    assert m.image_transform(rgb_images[0]).shape == (3, 64, 64)
    assert m.image_stream(torch.stack([m.image_transform(im) for im in rgb_images])).ids.shape == (5, 4)  # 2x2 cells
    assert "img_size" not in m.backbone.kwargs and m.backbone.channels_last
    m.save_pretrained(tmp_path / "m")
    again = lsb_mm.load_model(tmp_path / "m")
    assert again.image_transform(rgb_images[0]).shape == (3, 64, 64)
    np.testing.assert_array_equal(again.encode_image(rgb_images), m.encode_image(rgb_images))
    with pytest.raises(lsb_mm.ModelLoadError, match="img_size must be an integer"):
        lsb_mm.create_model("timm:resnet18", img_size="big")


@pytest.mark.parametrize("fixture", ["tiny_hf_clip_dir", "tiny_hf_vit_dir"])
def test_trust_remote_code_reaches_every_hf_loader(fixture, request, monkeypatch):
    """Off unless asked for, and when asked for it reaches the model, tokenizer and processor loaders."""
    import transformers

    folder = request.getfixturevalue(fixture)
    seen = []
    for cls in (transformers.CLIPModel, transformers.AutoModel, transformers.AutoTokenizer, transformers.AutoImageProcessor):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, _name=cls.__name__, **kw):
            seen.append((_name, kw.get("trust_remote_code", False)))
            return _real(klass, *args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    lsb_mm.create_model(f"hf:{folder}", head="none")
    assert seen and not any(flag for _, flag in seen)
    seen.clear()
    lsb_mm.create_model(f"hf:{folder}", head="none", trust_remote_code=True)
    assert len(seen) >= 2 and all(flag for _, flag in seen), seen


@pytest.mark.parametrize("family", ["open_clip", "hf"])
def test_concurrent_text_encodes_each_get_their_own_tokens(family, tiny_hf_dir):
    """Two threads encoding at once (the search service's batcher and a reload's modulation probe)
    each get the embeddings of their own texts: a capture of the tower's hidden states must not
    see the other thread's forward pass."""
    import threading

    name = "open_clip:lsb-tiny-test" if family == "open_clip" else f"hf:{tiny_hf_dir}"
    model = lsb_mm.create_model(name, head="slr", head_init="random")
    texts = {0: ["one short text"] * 3, 1: [f"a much longer text number {i} with many more words in it" for i in range(7)]}
    want = {t: model.encode_text(texts[t], show_progress_bar=False) for t in texts}
    errors, wrong = [], []

    def work(t):
        try:
            for _ in range(60):
                got = model.encode_text(texts[t], show_progress_bar=False)
                if got.shape != want[t].shape or not np.allclose(got, want[t], atol=1e-5):
                    wrong.append(t)
        except Exception as exc:  # noqa: BLE001 - any failure of a concurrent encode is the bug
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not wrong, (errors[:3], len(wrong))
