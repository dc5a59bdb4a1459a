"""The frozen image tower's feature cache: same results, computed once, never for a training tower."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import lsb_mm
from lsb_mm.training.feature_cache import ImageFeatureCache
from lsb_mm.training.config import TrainConfig
from lsb_mm.training.trainer import train

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402


def cnn(seed=0):
    return lsb_mm.create_model("timm:resnet18", head="llr", vocab_size=8, img_size=32, seed=seed)


def test_cached_features_equal_computed_ones_and_are_computed_once(rgb_images):
    m = cnn()
    plain = m.encode_image(rgb_images, batch_size=2)
    cache = ImageFeatureCache(max_gb=0.1)
    with cache.attach(m):
        first = m.encode_image(rgb_images, batch_size=2)
        assert cache.stats()["misses"] == 5 and cache.stats()["hits"] == 0 and len(cache) == 5
        second = m.encode_image(rgb_images[::-1] + rgb_images[:1], batch_size=4)  # other batches, a repeat
    assert cache.stats()["hits"] == 6 and cache.stats()["misses"] == 5
    np.testing.assert_allclose(first, plain, atol=1e-5)
    np.testing.assert_allclose(second, np.concatenate([plain[::-1], plain[:1]]), atol=1e-5)
    assert "image_features" not in vars(m.backbone)  # detached: the class method is back
    with cache.attach(cnn(seed=1)):  # another tower: nothing served from the first one
        assert len(cache) == 0


def test_one_cache_serves_one_tower_at_a_time(rgb_images):
    """Attaching to a second tower while the first is attached would re-key the shared rows (the
    first tower would then store its features as the second's): refused, unless the weights are the same."""
    a, b = cnn(seed=0), cnn(seed=1)
    cache = ImageFeatureCache(max_gb=0.1)
    with cache.attach(a):
        a.encode_image(rgb_images[:2])
        twin = cnn(seed=0)  # another model object, the same tower weights: the same features, served together
        with cache.attach(twin):
            np.testing.assert_allclose(twin.encode_image(rgb_images[:2]), a.encode_image(rgb_images[:2]), atol=1e-6)
        assert cache.stats()["misses"] == 2 and "image_features" not in vars(twin.backbone)
        with pytest.raises(RuntimeError, match="already attached to an image tower with other weights"):
            with cache.attach(b):
                pass
        assert "image_features" not in vars(b.backbone)  # the refused attach left b alone
        again = a.encode_image(rgb_images[:2])  # still a's cache, still a's features
        assert cache.stats()["hits"] == 6
    with cache.attach(b):  # after the first block, the second tower is fine (the rows are emptied)
        np.testing.assert_allclose(b.encode_image(rgb_images[:2]), cnn(seed=1).encode_image(rgb_images[:2]), atol=1e-5)
    assert not np.allclose(again, b.encode_image(rgb_images[:2]))


def test_the_cache_refuses_a_training_tower(rgb_images):
    m = cnn()
    pix = torch.stack([m.image_transform(im) for im in rgb_images])
    with ImageFeatureCache().attach(m), pytest.raises(RuntimeError, match="trainable"):
        m.image_stream(pix)  # grad enabled and the tower's parameters require grad
    m.requires_grad_(False)
    m.train()  # batch norm on batch statistics: not a fixed function of the image
    with ImageFeatureCache().attach(m), pytest.raises(RuntimeError, match="train mode"):
        m.image_stream(pix)
    m.eval()
    cache = ImageFeatureCache()
    with cache.attach(m), pytest.raises(RuntimeError, match="already attached"):
        with cache.attach(m):
            pass


def test_cached_features_are_float32_under_autocast(rgb_images):
    m = cnn().eval()
    pix = torch.stack([m.image_transform(im) for im in rgb_images])
    cache = ImageFeatureCache()
    with cache.attach(m), torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m.image_stream(pix[:3])
        assert all(t.dtype == torch.float32 for row in cache.rows.values() for t in row)
        mixed = m.image_stream(pix)  # 3 rows from the cache and 2 fresh ones, one dtype
    assert mixed.hidden.dtype == torch.float32


def test_full_cache_computes_the_rest_each_time(rgb_images):
    m = cnn()
    cache = ImageFeatureCache(max_gb=1.5 * 3 * 512 * 4 / (1 << 30))  # 1 cell + pooled + summary, 512 floats each: one image fits
    with cache.attach(m):
        out = m.encode_image(rgb_images)
        again = m.encode_image(rgb_images)
    assert len(cache) == 1 and cache.stats()["hits"] == 1
    np.testing.assert_allclose(out, again, atol=1e-6)


@pytest.mark.slow
def test_training_with_a_locked_tower_uses_the_cache_and_matches_without(tmp_path):
    folder = helpers.labelled_folder(tmp_path / "shapes", per_class=4)
    base = dict(model="timm:resnet18", head="slr", modality="image", train_data=str(folder), max_steps=6,
                batch_size=8, lr=1e-2, vocab_size=8, fit_codebook=16, show_progress_bar=False, log_steps=1)
    cache = ImageFeatureCache()
    runs = {}
    for name, gb in (("cached", 4.0), ("plain", 0.0)):
        cfg = TrainConfig(**base, output=str(tmp_path / name), feature_cache_gb=gb)
        final = train(cfg, feature_cache=cache if gb else None)
        runs[name] = (lsb_mm.load_model(final), [json.loads(x)["loss"] for x in open(tmp_path / name / "train_log.jsonl")
                                                 if "loss" in json.loads(x)])
    from lsb_mm.data.images import list_image_files

    n_images = len(list_image_files(str(folder)))
    assert cache.stats()["misses"] == len(cache) <= n_images and cache.stats()["hits"] > 0  # each image computed once
    (a, la), (b, lb) = runs["cached"], runs["plain"]
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-5), k
