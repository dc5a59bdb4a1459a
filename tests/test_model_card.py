"""Every saved model folder carries a model card (``README.md``): front matter the Hugging Face hub
reads, and what the run recorded: encoder, head, fusion, recipe, data, best validation, modulation."""
import json
import os

import helpers
from lsb_mm.cli import main
from lsb_mm.files import file_sha256

MODEL = "open_clip:lsb-tiny-test"


def _card(folder):
    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(folder, "README.md"))  # the hub's own parser of the front matter
    return card.data.to_dict(), card.text


def test_a_trained_model_card_says_what_the_run_recorded(tmp_path):
    train = tmp_path / "train.jsonl"
    helpers.write_jsonl(train, helpers.passage_queries(24, per_passage=2, dev=0)[0])
    out = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--head", "slr", "--train-data", str(train), "--val-fraction", "0.25",
                 "--eval-steps", "2", "--max-steps", "4", "--batch-size", "8", "--lr", "0.001", "--output", str(out),
                 "-q"]) == 0
    final = out / "final"
    meta, text = _card(final)
    assert meta["library_name"] == "lsb-mm" and "lexsembridge" in meta["tags"]
    assert meta["pipeline_tag"] == "feature-extraction"
    log = [json.loads(ln) for ln in open(out / "train_log.jsonl")]
    best = [r["best"] for r in log if "best" in r][-1]
    config = json.load(open(final / "lsb_config.json"))
    rec = config["training"]
    assert rec["best"] == best and rec["saved_step"] == best["step"]
    assert rec["data"]["train"]["sha256"] == file_sha256(str(train)) and rec["data"]["train"]["examples"] == 36
    assert "`open_clip:lsb-tiny-test`" in text and "text: `slr`" in text
    assert "query side on, document side off" in text
    assert "| lr | 0.001 |" in text and "| head | slr |" in text and "| total_steps | 4 |" in text
    assert f"`{file_sha256(str(train))[:16]}`" in text and "| train | `train.jsonl` | 36 |" in text
    assert f"**{best['value']:.4f}** at step {best['step']}" in text
    mod = [r["modulation"] for r in log if r.get("step") == best["step"] and "eval" in r][-1]
    assert f"**{mod['max_over_min']:.4g}**" in text
    assert "model.encode_query" in text and "lsb_mm.load_model" in text and "build_index" in text


def test_an_untrained_save_has_a_card_and_hub_base_models(tmp_path, minilm_path):
    import lsb_mm
    from lsb_mm.models.model_card import base_models

    lsb_mm.create_model(MODEL, head="clr").save_pretrained(str(tmp_path / "m"))
    meta, text = _card(tmp_path / "m")
    assert "Not trained by `lsb-mm train`" in text and "image-feature-extraction" in meta["tags"]
    assert "base_model" not in meta  # a config registered locally has no hub id
    lsb_mm.create_model("hf:" + minilm_path, head="slr").save_pretrained(str(tmp_path / "mini"))
    meta, _ = _card(tmp_path / "mini")
    assert meta["base_model"] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert base_models({"family": "hf", "name": "BAAI/bge-small-en-v1.5@main"}) == ["BAAI/bge-small-en-v1.5"]
    assert base_models({"family": "open_clip", "name": "hf-hub:timm/ViT-B-16-SigLIP"}) == ["timm/ViT-B-16-SigLIP"]
    assert base_models({"family": "dual", "text": {"family": "hf", "name": "org/text"},
                        "image": {"family": "timm", "name": "resnet50.a1_in1k"}}) == ["org/text", "timm/resnet50.a1_in1k"]
