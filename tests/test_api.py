"""An API without traps: sentence-transformers v5's names (``encode_query``, ``encode_document``,
``similarity``), the document role by default everywhere, and FAISS's ``(scores, ids)`` order from
every search entry point."""
import inspect
import json
import pathlib

import numpy as np
import pytest

import helpers
from lsb_mm.cli import main
from lsb_mm.errors import InputError

TEXTS = ["a red car", "the cat sat on the mat", "rivers and stones"]


@pytest.fixture(scope="module")
def model():
    """A model whose query head moves embeddings (random head init): query != document."""
    import lsb_mm

    return lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr", head_init="random", seed=3)


def test_the_default_role_is_the_document_role(model, rgb_images):
    from lsb_mm import LSBModel

    for method in (LSBModel.encode_text, LSBModel.encode_image):
        assert inspect.signature(method).parameters["role"].default == "document"
    doc, query = model.encode_document(TEXTS), model.encode_query(TEXTS)
    assert np.abs(doc - query).max() > 1e-3  # the head does act on queries
    np.testing.assert_array_equal(model.encode_text(TEXTS), doc)
    np.testing.assert_array_equal(model.encode_text(TEXTS, enhance=False), doc)  # documents are plain (fusion_p off)
    np.testing.assert_array_equal(model.encode_image(rgb_images), model.encode_document(rgb_images))
    assert np.abs(model.encode_query(rgb_images) - model.encode_document(rgb_images)).max() > 1e-3


def test_encode_is_the_one_path_by_modality(model, rgb_images):
    """``model.encode(items, modality, role)``: what every caller (CLI, engine, evaluation, trainer) uses."""
    np.testing.assert_array_equal(model.encode(TEXTS, "text", "query"), model.encode_text(TEXTS, role="query"))
    np.testing.assert_array_equal(model.encode(TEXTS, "text", num_workers=2), model.encode_document(TEXTS))  # texts: no decoding
    np.testing.assert_array_equal(model.encode(rgb_images, "image", "query"), model.encode_query(rgb_images))
    with pytest.raises(InputError, match="modality must be 'text' or 'image', got 'audio'"):
        model.encode(TEXTS, "audio")


def test_lsb_mm_encode_defaults_to_the_document_role(model, tmp_path, capsys):
    model.save_pretrained(str(tmp_path / "m"))
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["encode", "--model", str(tmp_path / "m"), "--texts", str(tmp_path / "t.txt"),
                 "--output", str(tmp_path / "d.npy"), "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["role"] == "document"
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), model.encode_document(TEXTS))
    assert main(["encode", "--model", str(tmp_path / "m"), "--texts", str(tmp_path / "t.txt"), "--role", "query",
                 "--output", str(tmp_path / "q.npy"), "-q"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), model.encode_query(TEXTS))


def test_encode_query_and_document_take_texts_or_images(model, rgb_images, tmp_path):
    paths = []
    for i, im in enumerate(rgb_images[:2]):
        paths.append(tmp_path / f"im{i}.png")
        im.save(paths[-1])
    from_pil = model.encode_document(rgb_images[:2])
    np.testing.assert_allclose(model.encode_document(paths), from_pil, atol=1e-6)  # pathlib.Path: an image
    np.testing.assert_allclose(model.encode_document([str(p) for p in paths], modality="image"), from_pil, atol=1e-6)
    assert model.encode_query("one text").shape == (model.embed_dim,)
    assert model.encode_document(rgb_images[0]).shape == (model.embed_dim,)
    for bad, match in (([TEXTS[0], rgb_images[0]], "mix texts and images"), ([1, 2], r"inputs\[0\] is a int"),
                       ([], "non-empty list"), (3.5, "expected a text, an image")):
        with pytest.raises(InputError, match=match):
            model.encode_query(bad)
    with pytest.raises(InputError, match="sets the role itself"):
        model.encode_query(TEXTS, role="document")
    with pytest.raises(InputError, match="modality must be"):
        model.encode_document(TEXTS, modality="audio")


def test_similarity_is_the_cosine_matrix(model):
    import torch

    q, d = model.encode_query(TEXTS[:2]), model.encode_document(TEXTS)
    sim = model.similarity(q, d)
    assert isinstance(sim, torch.Tensor) and sim.shape == (2, 3)
    np.testing.assert_allclose(sim.numpy(), q @ d.T, atol=1e-6)
    np.testing.assert_allclose(model.similarity(torch.from_numpy(2 * q[0]), d).numpy(), q[:1] @ d.T, atol=1e-6)
    with pytest.raises(InputError, match="embeddings"):
        model.similarity(q[:, :5], d)


def _ranked(scores, ids, k):
    """``(scores, ids)``: a row of floats best first, and a row of string ids, per query (``None``
    pads a row past the last match, as FAISS pads with -1)."""
    scores = [list(map(float, row)) for row in scores]
    assert len(scores) == len(ids) and all(len(s) == len(i) <= k for s, i in zip(scores, ids))
    for s, i in zip(scores, ids):
        i = list(i)
        found = [x for x in i if x is not None]
        assert s == sorted(s, reverse=True) and all(isinstance(x, str) for x in found) and i[:len(found)] == found


def test_every_search_entry_point_returns_scores_then_ids(model, tmp_path):
    import lsb_mm
    from lsb_mm.retrieval.bm25 import BM25
    from lsb_mm.retrieval.fusion import fuse, rrf, weighted_fusion

    docs = [{"_id": f"d{i}", "text": f"{w} and {helpers.WORDS[i + 1]}"} for i, w in enumerate(helpers.WORDS[:12])]
    helpers.write_jsonl(tmp_path / "c.jsonl", docs)
    index = lsb_mm.build_index(model, tmp_path / "c.jsonl", str(tmp_path / "ix"), bm25=True, show_progress_bar=False)
    q = model.encode_query(["apple river", "stone"])
    entry_points = {
        "Index.search": index.search(q, k=4),
        "Index.search_hybrid rrf": index.search_hybrid(q, ["apple river", "stone"], k=4),
        "Index.search_hybrid weighted": index.search_hybrid(q, ["apple river", "stone"], k=4, fusion=0.5),
        "BM25.search": index.bm25.search(["apple river", "stone"], k=4),
        "BM25.build().search": BM25.build([d["text"] for d in docs], [d["_id"] for d in docs]).search(["cloud"], k=4),
    }
    dense, lexical = entry_points["Index.search"], entry_points["BM25.search"]
    entry_points["lexical.rrf"] = rrf([dense[1], lexical[1]], k=4)
    entry_points["lexical.weighted_fusion"] = weighted_fusion(dense, lexical, 0.3, k=4)
    entry_points["lexical.fuse"] = fuse(dense, lexical, "rrf", k=4)
    lsb_mm.build_index(model, tmp_path / "c.jsonl", str(tmp_path / "part1"), shard="1/2", show_progress_bar=False)
    lsb_mm.build_index(model, tmp_path / "c.jsonl", str(tmp_path / "part2"), shard="2/2", show_progress_bar=False)
    entry_points["Index.load(shards).search"] = lsb_mm.Index.load([str(tmp_path / "part1"), str(tmp_path / "part2")]).search(q, k=4)
    for name, (scores, ids) in entry_points.items():
        try:
            _ranked(scores, ids, 4)
        except AssertionError as exc:
            raise AssertionError(f"{name} does not return (scores, ids): {exc}") from exc
    emb = dict(zip([d["_id"] for d in docs], model.encode_document([d["text"] for d in docs])))
    np.testing.assert_allclose(dense[0][0], [float(q[0] @ emb[i]) for i in dense[1][0]], atol=1e-5)  # scores first
    assert entry_points["Index.search_hybrid rrf"] == fuse(index.search(q, k=12), index.bm25.search(
        ["apple river", "stone"], k=12), "rrf", 4)


def test_the_readme_order_is_the_one_order(model):
    """The README shows ``scores, ids = index.search(...)``, and no page of the docs the other order."""
    root = pathlib.Path(__file__).parent.parent
    assert "scores, ids = index.search" in (root / "README.md").read_text()
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        assert "ids, scores =" not in page.read_text(), page


@pytest.mark.parametrize("device, match", [
    ("cuda:99", r"device 'cuda:99': torch sees (no CUDA GPU|\d+ CUDA GPU)"),
    ("bogus", r"device 'bogus' is not a device"),
    ("meta", r"device 'meta' is not a device"),
    (5, r"device must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:1', got int 5"),
    (None, r"device must be a string .* got NoneType None"),
])
def test_device_names_are_checked_in_the_api(model, tmp_path, device, match):
    """create_model, load_model and TrainConfig refuse a device that is not there or not a device,
    with the project's error naming the argument, before anything is loaded or placed."""
    import lsb_mm

    folder = str(tmp_path / "m")
    model.save_pretrained(folder)
    with pytest.raises(InputError, match=match):
        lsb_mm.load_model(folder, device=device)
    with pytest.raises(InputError, match=match):
        lsb_mm.create_model("open_clip:lsb-tiny-test", head="slr", device=device)
    with pytest.raises(InputError, match=match.replace("device", "--device", 1)):
        lsb_mm.TrainConfig(model="m", train_data="t.jsonl", output=str(tmp_path / "o"), device=device).check()
    assert str(lsb_mm.load_model(folder, device="cpu").device) == "cpu" and lsb_mm.load_model(folder, device="auto")
